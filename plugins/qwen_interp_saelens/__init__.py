"""Built-in plugin: Qwen-Scope SAEs in SAELens.

- Registers the 14 Qwen-Scope releases (listed in docs/formats.md) as ``SAERelease`` records.
- Adapter (when ``sae_lens`` is imported), three parts, each standing down wherever SAELens
  already does the job:
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
from qwen_interp.adapters import AdapterBase, AlreadyUpstream, NothingToChange, Part
from qwen_interp.patching import PatchSet
from qwen_interp.specs import Command

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
           "load_sae", "load_sae_from_dir", "sae_cache_dir", "sae_config", "steer",
           "suppress"]


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


LOADERS = "sae_lens.loading.pretrained_sae_loaders"


class SAELensAdapter(AdapterBase):
    """Parts ``releases``, ``config`` and ``weights``. The ``qwen_scope`` loader they share is
    built at activation, from SAELens's tables as they were before any part changed them."""

    name = "saelens"
    module = "sae_lens"

    def __init__(self) -> None:
        super().__init__()
        self.loader: QwenScopeLoader | None = None

    def activate(self, registry) -> None:
        if not self.active:
            self.loader = self._new_loader(registry)
        super().activate(registry)

    def deactivate(self) -> None:
        try:
            super().deactivate()
        finally:
            self.loader = None

    def parts(self) -> list[Part]:
        return [
            Part("releases", self.module, "get_pretrained_saes_directory()'s cached table: "
                 "entries for registered releases SAELens lacks", self._add_releases),
            Part("config", self.module, f"{LOADERS}.NAMED_PRETRAINED_SAE_CONFIG_GETTERS"
                 f"[{QWEN_SCOPE!r}], where SAELens has none", self._add_config),
            Part("weights", self.module, f"{LOADERS}.NAMED_PRETRAINED_SAE_LOADERS[{QWEN_SCOPE!r}]"
                 ": a weights_only, cached reader", self._replace_weights_loader),
        ]

    @staticmethod
    def _new_loader(registry) -> QwenScopeLoader:
        import sae_lens.loading.pretrained_sae_loaders as loaders
        import sae_lens.loading.pretrained_saes_directory as directory_mod
        directory = directory_mod.get_pretrained_saes_directory()
        getters = getattr(loaders, "NAMED_PRETRAINED_SAE_CONFIG_GETTERS", None)
        upstream_getter = getters.get(QWEN_SCOPE) if getters is not None else None
        upstream_repos = {e.repo_id for e in directory.values()
                          if getattr(e, "conversion_func", None) == QWEN_SCOPE}
        return QwenScopeLoader(registry, upstream_getter, upstream_repos)

    def _add_releases(self, patches: PatchSet, registry) -> str:
        import sae_lens.loading.pretrained_saes_directory as directory_mod
        directory = directory_mod.get_pretrained_saes_directory()
        missing, upstream, differ = [], [], []
        for rel in sorted(registry.sae_releases.values(), key=lambda r: r.release):
            entry = directory.get(rel.release)
            if entry is None:
                missing.append(rel)
            elif entry.repo_id != rel.repo_id:
                differ.append(f"{rel.release} (SAELens: {entry.repo_id})")
            else:
                upstream.append(rel.release)
        kept = (f"; SAELens's entry kept where it names another repo: {', '.join(differ)}"
                if differ else "")
        if not missing:
            raise AlreadyUpstream(f"{len(upstream)} already in SAELens{kept}")
        if not hasattr(directory_mod.get_pretrained_saes_directory, "cache_info"):
            # Without @cache the directory is re-read on every call: entries cannot be added.
            raise RuntimeError("SAELens re-reads its directory on every call: releases it lacks "
                               "cannot be added (load them with load_sae_from_dir)")
        for rel in missing:
            patches.setitem(directory, rel.release,
                            _lookup(directory_mod.PretrainedSAELookup, rel))
        return (f"{len(upstream)} already in SAELens, {len(missing)} added: "
                f"{', '.join(r.release for r in missing)}{kept}")

    def _add_config(self, patches: PatchSet, registry) -> str:
        import sae_lens.loading.pretrained_sae_loaders as loaders
        getters = getattr(loaders, "NAMED_PRETRAINED_SAE_CONFIG_GETTERS", None)
        if getters is None:
            raise NothingToChange("this SAELens has no config-getter table")
        if getters.get(QWEN_SCOPE) is not None:
            raise AlreadyUpstream("SAELens's own getter, for its releases")
        assert self.loader is not None  # activate() makes it before the parts are applied
        patches.setitem(getters, QWEN_SCOPE, self.loader.config)
        return "added (SAELens has none)"

    def _replace_weights_loader(self, patches: PatchSet, registry) -> str:
        import sae_lens.loading.pretrained_sae_loaders as loaders
        loader_table = loaders.NAMED_PRETRAINED_SAE_LOADERS
        upstream_loader = loader_table.get(QWEN_SCOPE)
        # One loader for the name: ours reads the same files, safely and through the cache.
        patches.setitem(loader_table, QWEN_SCOPE, self.loader)
        if upstream_loader is None:
            how = "added (SAELens has none)"
        elif _reads_weights_only(upstream_loader):
            how = "SAELens's reader is already weights_only (upstream fix); replaced for the cache"
        else:
            how = "replaces SAELens's torch.load reader (weights_only=True)"
        return (f"{how}; cache "
                f"{sae_cache_dir() if cache_enabled() else 'off (QWEN_INTERP_SAE_CACHE=0)'}")


_ADAPTER = SAELensAdapter()


@hookimpl
def register_sae_releases(register):
    for release in QWEN_SCOPE_RELEASES:
        register(release)


@hookimpl
def register_adapters(register):
    register(_ADAPTER)


@hookimpl
def register_upstream_patches(register):
    # The same changes as upstream-ready source patches (`qwen-interp patches`).
    from .upstream_patches import PROJECT
    register(PROJECT)


# `qwen-interp saes`: the releases, their layers and where each layer is cached.
def _configure_saes(parser) -> None:
    parser.add_argument("release", nargs="?",
                        help="one release, e.g. qwen-scope-3-1.7b-base-w32k-l50")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="one line per layer, with paths")


def _run_saes(args) -> int:
    print(format_sae_releases(list_sae_releases(args.release), verbose=args.verbose))
    return 0


SAES_COMMAND = Command("saes", "Qwen-Scope SAE releases, their layers and where each is cached",
                       configure=_configure_saes, run=_run_saes)


@hookimpl
def register_commands(register):
    register(SAES_COMMAND)
