"""Built-in plugin: Qwen-Scope SAEs in SAELens.

- Registers the 14 Qwen-Scope releases (FACTS.md §4) as ``SAERelease`` records.
- Adapter (when ``sae_lens`` is imported), standing down wherever SAELens already does the job:
  * releases: SAELens's directory entry is used where it exists; entries are added only for
    registered releases it lacks (all 14 on SAELens < ~6.43; plugin-registered releases);
  * config: SAELens's ``qwen_scope`` config getter where it knows the release, else ours (same
    keys and values, tested equal); a getter is added only when SAELens has none;
  * weights: the ``qwen_scope`` conversion function reads each ``layer{n}.sae.pt`` with
    ``weights_only=True``, validates it, and caches it as memory-mapped safetensors
    (:mod:`.files`). It takes the place of SAELens's function in ``NAMED_PRETRAINED_SAE_LOADERS``
    (one loader, never two); ``deactivate()`` puts SAELens's back.
- :func:`load_sae` / :func:`load_sae_from_dir`: a local folder of ``layer{n}.sae.pt`` files.
- :mod:`.steering`: ``steer`` / ``clamp`` / ``suppress`` context managers.
- :func:`list_sae_releases`: releases, layers and where each layer is cached (for the CLI).
"""

from __future__ import annotations

import dataclasses

from qwen_interp import hookimpl
from qwen_interp.patching import PatchSet

from .files import (SAEFileError, UnsafeCheckpointError, cache_enabled, cache_root,
                    sae_cache_dir)
from .listing import LayerLocation, SAEReleaseListing, format_sae_releases, list_sae_releases
from .loader import (QWEN_SCOPE, QwenScopeLoader, SAEModelMismatchError, check_sae_fits_model,
                     load_sae, load_sae_from_dir, sae_config)
from .releases import QWEN_SCOPE_RELEASES, layer_file, sae_id
from .steering import clamp, steer, suppress

__all__ = ["QWEN_SCOPE_RELEASES", "LayerLocation", "SAEFileError", "SAELensAdapter",
           "SAEModelMismatchError", "SAEReleaseListing", "UnsafeCheckpointError", "cache_root",
           "check_sae_fits_model", "clamp", "format_sae_releases", "list_sae_releases",
           "load_sae", "load_sae_from_dir", "sae_cache_dir", "steer", "suppress"]


def _lookup(cls, release) -> object:
    """A SAELens ``PretrainedSAELookup`` for ``release``, filling only the fields this SAELens
    version has (they differ across 6.x)."""
    ids = [sae_id(n) for n in range(release.n_layers)]
    values = {"release": release.release, "repo_id": release.repo_id,
              "model": release.model_repo_id, "conversion_func": QWEN_SCOPE,
              "saes_map": {i: layer_file(release, n) for n, i in enumerate(ids)},
              "expected_var_explained": {i: 1.0 for i in ids},
              "expected_l0": {i: float(release.k) for i in ids},
              "neuronpedia_id": {i: None for i in ids}, "norm_scaling_factor": {},
              "config_overrides": None}
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            kwargs[f.name] = values[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs[f.name] = {} if "dict" in str(f.type) else None
    return cls(**kwargs)


def _reads_weights_only(loader) -> bool:
    """Probe: does SAELens's own Qwen-Scope reader already pass weights_only=True?"""
    import inspect
    try:
        return "weights_only=True" in inspect.getsource(loader)
    except (OSError, TypeError):
        return False


class SAELensAdapter:
    name = "saelens"
    module = "sae_lens"

    def __init__(self) -> None:
        self._patches = PatchSet()
        self.active = False
        self.report: list[str] = []
        self.loader: QwenScopeLoader | None = None

    def activate(self, registry) -> None:
        if self.active:
            return
        import sae_lens.loading.pretrained_sae_loaders as loaders
        import sae_lens.loading.pretrained_saes_directory as directory_mod

        self.active = True
        self.report = []
        directory = directory_mod.get_pretrained_saes_directory()
        loader_table = loaders.NAMED_PRETRAINED_SAE_LOADERS
        getters = getattr(loaders, "NAMED_PRETRAINED_SAE_CONFIG_GETTERS", None)
        upstream_getter = getters.get(QWEN_SCOPE) if getters is not None else None
        upstream_repos = {e.repo_id for e in directory.values()
                          if getattr(e, "conversion_func", None) == QWEN_SCOPE}

        self._directory_entries(registry, directory_mod, directory)
        self.loader = QwenScopeLoader(registry, upstream_getter, upstream_repos)
        if upstream_getter is not None:
            self.report.append("qwen_scope config: SAELens's own (stood down) for its releases")
        elif getters is not None:
            self._patches.setitem(getters, QWEN_SCOPE, self.loader.config)
            self.report.append("qwen_scope config: added (SAELens has none)")
        upstream_loader = loader_table.get(QWEN_SCOPE)
        # One loader for the name: ours reads the same files, safely and through the cache.
        self._patches.setitem(loader_table, QWEN_SCOPE, self.loader)
        if upstream_loader is None:
            how = "added (SAELens has none)"
        elif _reads_weights_only(upstream_loader):
            how = "SAELens's reader is already weights_only (upstream fix); replaced for the cache"
        else:
            how = "replaces SAELens's torch.load reader (weights_only=True)"
        self.report.append(
            f"qwen_scope weights: {how}; cache "
            f"{sae_cache_dir() if cache_enabled() else 'off (QWEN_INTERP_SAE_CACHE=0)'}")

    def _directory_entries(self, registry, directory_mod, directory) -> None:
        if not hasattr(directory_mod.get_pretrained_saes_directory, "cache_info"):
            # Without @cache the directory is re-read on every call: entries cannot be added.
            self.report.append("SAELens re-reads its directory on every call: releases it lacks "
                               "cannot be added (load them with load_sae_from_dir)")
            return
        added, upstream, differ = [], [], []
        for rel in sorted(registry.sae_releases.values(), key=lambda r: r.release):
            entry = directory.get(rel.release)
            if entry is None:
                self._patches.setitem(directory, rel.release,
                                      _lookup(directory_mod.PretrainedSAELookup, rel))
                added.append(rel.release)
            elif entry.repo_id != rel.repo_id:
                differ.append(f"{rel.release} (SAELens: {entry.repo_id})")
            else:
                upstream.append(rel.release)
        self.report.append(f"SAE releases: {len(upstream)} already in SAELens (stood down), "
                           f"{len(added)} added" + (f": {', '.join(added)}" if added else ""))
        if differ:
            self.report.append(f"SAELens's entry kept where it names another repo: "
                               f"{', '.join(differ)}")

    def deactivate(self) -> None:
        self._patches.undo()
        self.active = False
        self.report = []
        self.loader = None

    def status(self) -> list[str]:
        return list(self.report) if self.active else ["not active (sae_lens not imported)"]


_ADAPTER = SAELensAdapter()


@hookimpl
def register_sae_releases(register):
    for release in QWEN_SCOPE_RELEASES:
        register(release)


@hookimpl
def register_adapters(register):
    register(_ADAPTER)
