"""SAELens side: the ``qwen_scope`` config and loader, and loading from a local folder.

The config mirrors SAELens's own ``get_qwen_scope_config_from_hf`` (tested equal on all 14
releases); it is used only for releases SAELens does not know (older 6.x, or releases that other
plugins register). Weights always come through :func:`files.read_layer`: safe and cached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from qwen_interp.errors import CheckpointError
# Moved to the core (registry logic); re-exported: qwen_interp_saelens.check_sae_fits_model.
from qwen_interp.fit import SAEModelMismatchError, check_sae_fits_model  # noqa: F401
from qwen_interp.specs import SAERelease

from .files import Expected, SAEFileError, load_pickle_safely, others_from, read_layer
from .releases import layer_file, layer_of

QWEN_SCOPE = "qwen_scope"  # SAELens's conversion_func name for Qwen-Scope
# Used when a release's model has no registered hook-name map (e.g. a plugin's release for an
# unregistered model): the names are those of every Qwen decoder stack in TL and HF.
_DEFAULT_TL, _DEFAULT_HF = "blocks.{layer}.hook_resid_post", "model.layers.{layer}"


class SAENotCachedError(CheckpointError, FileNotFoundError):
    """An SAE layer file is not in the local Hugging Face cache and cannot be downloaded."""

    def __init__(self, release: SAERelease | None, repo_id: str, filename: str) -> None:
        from huggingface_hub import constants
        name = f"{release.release} layer{layer_of(filename)}" if release else repo_id
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE
               else "the Hub could not be reached")
        super().__init__(f"{name}: {filename} of {repo_id} is not in the local Hugging Face "
                         f"cache and {why}; download it once online (or copy it into the cache)")


def _hook_names(registry, release: SAERelease, layer: int) -> tuple[str, str]:
    arch = None
    try:
        arch = registry.model(release.model_repo_id).architecture
    except KeyError:
        pass
    hooks = registry.hook_name_maps.get(arch) if arch else None
    if hooks is None:
        return _DEFAULT_TL.format(layer=layer), _DEFAULT_HF.format(layer=layer)
    point = hooks.point(release.hook_point)
    return point.tl.format(layer=layer), point.hf_module.format(layer=layer)


def sae_config(registry, release: SAERelease, layer: int, device: str = "cpu",
               cfg_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """SAELens config dict of one layer, the same keys and values as SAELens's own getter."""
    if not 0 <= layer < release.n_layers:
        raise ValueError(f"{release.release} has layers 0..{release.n_layers - 1}, not {layer}")
    tl_name, hf_name = _hook_names(registry, release, layer)
    return {
        "architecture": "topk",
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": release.k},
        "d_in": release.d_model,
        "d_sae": release.d_sae,
        "dtype": "float32",
        "context_size": 1024,
        "model_name": release.model_repo_id,
        "hook_name": tl_name,
        "hf_hook_name": hf_name,
        "hook_head_index": None,
        "prepend_bos": True,
        "dataset_path": None,
        "sae_lens_training_version": None,
        "normalize_activations": "none",
        "device": device,
        "apply_b_dec_to_input": False,
        "finetuning_scaling_factor": False,
        **(cfg_overrides or {}),
    }


def release_for_repo(registry, repo_id: str) -> SAERelease | None:
    for rel in registry.sae_releases.values():
        if rel.repo_id.lower() == repo_id.lower():
            return rel
    return None


def expected_for(registry, cfg: dict, label: str) -> Expected:
    others = [r for r in registry.sae_releases.values()
              if (r.d_model, r.d_sae) != (cfg["d_in"], cfg["d_sae"])]
    return Expected(d_model=cfg["d_in"], d_sae=cfg["d_sae"], label=label,
                    others=others_from(others))


def _hf_hub_download():
    """The download function SAELens's own loaders call, looked up at each call: tests (SAELens's
    included) mock ``sae_lens.loading.pretrained_sae_loaders.hf_hub_download``, and a Qwen-Scope
    download must go through that mock as SAELens's loader would."""
    try:
        from sae_lens.loading import pretrained_sae_loaders
        return pretrained_sae_loaders.hf_hub_download
    except (ImportError, AttributeError):  # another SAELens layout: the function it wraps
        from huggingface_hub import hf_hub_download
        return hf_hub_download


class QwenScopeLoader:
    """SAELens's ``qwen_scope`` conversion function: config from SAELens where it knows the
    release (``upstream_config``), else from the registered ``SAERelease``; weights read safely
    through the safetensors cache."""

    def __init__(self, registry, upstream_config=None, upstream_repo_ids=frozenset()) -> None:
        self.registry = registry
        self.upstream_config = upstream_config
        self.upstream_repo_ids = frozenset(r.lower() for r in upstream_repo_ids)

    def config(self, repo_id: str, folder_name: str, device: str = "cpu",
               force_download: bool = False, cfg_overrides: dict[str, Any] | None = None,
               **kwargs) -> dict[str, Any]:
        if self.upstream_config is not None and repo_id.lower() in self.upstream_repo_ids:
            return self.upstream_config(repo_id, folder_name, device, force_download,
                                        cfg_overrides, **kwargs)
        release = release_for_repo(self.registry, repo_id)
        if release is None:
            raise ValueError(f"{repo_id!r} is not a registered Qwen-Scope SAE repo; known: "
                             f"{sorted(r.repo_id for r in self.registry.sae_releases.values())}")
        return sae_config(self.registry, release, layer_of(folder_name), device, cfg_overrides)

    def __call__(self, repo_id: str, folder_name: str, device: str = "cpu",
                 force_download: bool = False, cfg_overrides: dict[str, Any] | None = None,
                 **kwargs):
        from huggingface_hub.utils import LocalEntryNotFoundError
        cfg = self.config(repo_id, folder_name, device, force_download, cfg_overrides, **kwargs)
        release = release_for_repo(self.registry, repo_id)
        label = f"{release.release if release else repo_id} {folder_name}"
        try:
            path = _hf_hub_download()(repo_id=repo_id, filename=folder_name,
                                      force_download=force_download)
        except LocalEntryNotFoundError as exc:  # offline, or the Hub unreachable
            raise SAENotCachedError(release, repo_id, folder_name) from exc
        state = read_layer(path, expected_for(self.registry, cfg, label), group=repo_id)
        if str(device) != "cpu":
            state = {k: v.to(device) for k, v in state.items()}
        return cfg, state, None


# --- local folders of layer{n}.sae.pt ----------------------------------------------------------
def release_for_folder(registry, folder: Path) -> SAERelease | None:
    """The registered release whose repo name (``SAE-Res-...-W32K-L0_50``) names ``folder`` or
    appears in its real path (a Hub snapshot ``models--Qwen--SAE-Res-...``)."""
    text = os.path.realpath(folder)
    for rel in registry.sae_releases.values():
        name = rel.repo_id.split("/")[-1]
        if folder.name == name or re.search(rf"(^|[/\-]){re.escape(name)}($|/)", text):
            return rel
    return None


def load_sae_from_dir(directory: str | os.PathLike, layer: int | str, *,
                      release: str | None = None, k: int | None = None,
                      model_name: str | None = None, device: str = "cpu",
                      dtype: str = "float32", registry=None):
    """A SAELens ``SAE`` from a local folder of Qwen-Scope ``layer{n}.sae.pt`` files.

    The release (and so k, the model and the expected shapes) is ``release``, else the registered
    release named by the folder (e.g. ``.../SAE-Res-Qwen3-1.7B-Base-W32K-L0_50``); otherwise pass
    ``k`` (and ``model_name``): shapes are then taken from the file.
    """
    import qwen_interp
    from sae_lens import SAE
    registry = registry or qwen_interp.registry()
    directory = Path(directory)
    layer = layer_of(f"{layer}.sae.pt") if isinstance(layer, str) else int(layer)
    if release is not None:
        rel = registry.sae_releases.get(release)
        if rel is None:
            raise KeyError(f"no registered SAE release {release!r}; "
                           f"known: {sorted(registry.sae_releases)}")
    else:
        rel = release_for_folder(registry, directory)
    source = directory / (layer_file(rel, layer) if rel else f"layer{layer}.sae.pt")
    if rel is None:
        if k is None:
            raise ValueError(f"{directory}: not named after a registered Qwen-Scope release; "
                             f"pass release=... or k=...")
        rel = _release_from_file(source, k, model_name, layer)
    cfg = sae_config(registry, rel, layer, device)
    if model_name is not None:
        cfg["model_name"] = model_name
    expected = expected_for(registry, cfg, f"{rel.release} layer{layer}")

    def converter(path, device, cfg_overrides=None):
        state = read_layer(source, expected, group=f"local--{directory.resolve().name}")
        if str(device) != "cpu":
            state = {key: v.to(device) for key, v in state.items()}
        return {**cfg, **(cfg_overrides or {}), "device": device}, state

    return SAE.load_from_disk(str(directory), device=device, dtype=dtype, converter=converter)


def _release_from_file(source: Path, k: int, model_name: str | None, layer: int) -> SAERelease:
    """An ad-hoc release for an unnamed folder: shapes from the file (read safely)."""
    if not source.is_file():
        raise SAEFileError(f"{source}: no such file")
    probe = Expected(d_model=0, d_sae=0, label=f"{source.parent.name} layer{layer}")
    raw = load_pickle_safely(source, probe)
    w_enc = raw.get("W_enc") if isinstance(raw, dict) else None
    if w_enc is None or w_enc.ndim != 2:
        raise SAEFileError(f"{source}: expected a dict with a 2-D W_enc (d_sae, d_model)")
    d_sae, d_model = (int(n) for n in w_enc.shape)
    return SAERelease(release=f"local:{source.parent}", repo_id=str(source.parent),
                      model_repo_id=model_name or "", d_model=d_model, d_sae=d_sae, k=k,
                      n_layers=layer + 1)


def load_sae(source: str | os.PathLike, layer: int | str, *, device: str = "cpu",
             dtype: str = "float32", **kwargs):
    """A SAELens ``SAE`` from a release name (through ``SAE.from_pretrained``) or a local folder."""
    import qwen_interp
    from sae_lens import SAE
    layer = layer_of(f"{layer}.sae.pt") if isinstance(layer, str) else int(layer)
    if str(source) in qwen_interp.registry().sae_releases:
        return SAE.from_pretrained(str(source), f"layer{layer}", device=device, dtype=dtype)
    return load_sae_from_dir(source, layer, device=device, dtype=dtype, **kwargs)
