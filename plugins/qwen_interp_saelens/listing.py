"""What the ``qwen-interp saes`` CLI prints: releases, layers, and where each layer is on disk.

Imports neither SAELens nor torch: it reads the registry, the HF cache and qwen-interp's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from .files import cache_path, cached_conversions, sae_cache_dir
from .releases import layer_file


@dataclass(frozen=True)
class LayerLocation:
    layer: int
    sae_id: str  # SAELens id, "layer{n}"
    hub_file: str | None  # the downloaded layer{n}.sae.pt in the HF cache, if any
    cache_file: str | None  # its safetensors conversion in qwen-interp's cache, if any


@dataclass(frozen=True)
class SAEReleaseListing:
    release: str
    repo_id: str
    model_repo_id: str
    d_model: int
    d_sae: int
    k: int
    n_layers: int
    layers: tuple[LayerLocation, ...]

    @property
    def n_cached(self) -> int:
        return sum(loc.cache_file is not None for loc in self.layers)


def _hub_file(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache
    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def list_sae_releases(release: str | None = None, registry=None) -> list[SAEReleaseListing]:
    """Every registered SAE release (or only ``release``), each layer with where it is cached.

    ``cache_file`` is the conversion of the exact downloaded file when that is present, else the
    newest conversion found for that layer (the download may have been deleted since)."""
    import qwen_interp
    registry = registry or qwen_interp.registry()
    rels = sorted(registry.sae_releases.values(), key=lambda r: r.release)
    if release is not None:
        rels = [r for r in rels if r.release == release]
        if not rels:
            raise KeyError(f"no registered SAE release {release!r}; "
                           f"known: {sorted(registry.sae_releases)}")
    out = []
    for rel in rels:
        layers = []
        for n in range(rel.n_layers):
            filename = layer_file(rel, n)
            hub = _hub_file(rel.repo_id, filename)
            cached = None
            if hub is not None and cache_path(hub, rel.repo_id).is_file():
                cached = str(cache_path(hub, rel.repo_id))
            else:
                found = cached_conversions(rel.repo_id, f"layer{n}")
                cached = str(found[0]) if found else None
            layers.append(LayerLocation(n, f"layer{n}", hub, cached))
        out.append(SAEReleaseListing(rel.release, rel.repo_id, rel.model_repo_id, rel.d_model,
                                     rel.d_sae, rel.k, rel.n_layers, tuple(layers)))
    return out


def format_sae_releases(listings: list[SAEReleaseListing], verbose: bool = False) -> str:
    """Plain-text table for the CLI; ``verbose`` adds one line per downloaded or cached layer."""
    lines = [f"cache: {sae_cache_dir()}"]
    for item in listings:
        downloaded = sum(loc.hub_file is not None for loc in item.layers)
        lines.append(f"{item.release:42} {item.repo_id:45} {item.model_repo_id:28} "
                     f"d_model {item.d_model:5} d_sae {item.d_sae:6} k {item.k:3} "
                     f"layers {item.n_layers:2} downloaded {downloaded:2} cached {item.n_cached:2}")
        if verbose:
            for loc in item.layers:
                if loc.hub_file or loc.cache_file:
                    lines.append(f"    {loc.sae_id:8} hub: {loc.hub_file or '-'}")
                    lines.append(f"    {'':8} cache: {loc.cache_file or '-'}")
    return "\n".join(lines)
