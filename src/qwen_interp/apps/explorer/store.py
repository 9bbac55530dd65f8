"""What the Explorer reads from disk: graph folders and feature-record sidecars.

- :class:`GraphFolder`: a folder ``qwen-interp trace`` (or circuit-tracer's
  ``create_graph_files``) wrote: ``graph-metadata.json`` and one ``<slug>.json`` per graph.
- :class:`FeatureStore`: the record sidecars of a ``qwen-interp features compute`` run
  (``features/`` for the CLT, ``sae_features/`` for SAEs; docs/feature-sidecar.md), or a
  release's ``features/`` folder in the Hugging Face cache. One record is one range read; the
  parsed index (offsets, O(features)) is the only thing kept in memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from qwen_interp.apps.features.sidecar import INDEX_NAME, read_index, read_record

METADATA = "graph-metadata.json"
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DICTIONARIES = {"clt": "features", "sae": "sae_features"}
# The scan a graph gets when no local features match it: upstream's viewer then asks this
# server for `./no-local-features/<id>.json` (404) instead of asking huggingface.co.
NO_FEATURES_SCAN = "./no-local-features"
LOCAL_SCAN_PREFIX = "/local/"


class NotFound(LookupError):
    """A graph, file or feature that is not there (HTTP 404)."""


class GraphFolder:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def metadata(self) -> dict:
        """``graph-metadata.json`` (re-read each time: ``trace`` may add graphs while serving)."""
        path = self.folder / METADATA
        if not path.is_file():
            return {"graphs": []}
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("graphs"), list):
            raise ValueError(f"{path}: expected {{\"graphs\": [...]}}")
        return data

    def graphs(self) -> list[dict]:
        return list(self.metadata()["graphs"])

    def graph(self, slug: str) -> dict:
        if not _SLUG.fullmatch(slug):
            raise NotFound(f"no graph {slug!r}")
        path = self.folder / f"{slug}.json"
        if not path.is_file():
            raise NotFound(f"no graph {slug!r} in {self.folder}")
        return json.loads(path.read_text())


@dataclass(frozen=True)
class Dictionary:
    id: str  # "clt" | "sae"
    name: str  # transcoder repo id or SAE release
    folder: Path
    layers: tuple[int, ...]
    width: int

    def info(self) -> dict:
        return {"id": self.id, "name": self.name, "layers": list(self.layers),
                "width": self.width}


class FeatureStore:
    """Feature records by (dictionary, layer, feature), read by range from the sidecars."""

    def __init__(self, dictionaries: list[Dictionary]) -> None:
        self.dictionaries = {d.id: d for d in dictionaries}

    @classmethod
    def from_run(cls, run: str | Path | None) -> FeatureStore:
        """The sidecars of a ``features compute`` run folder (either may be missing). A
        ``features/`` folder itself (a release's, or upstream's layout) is accepted too."""
        if run is None:
            return cls([])
        run = Path(run)
        if not run.is_dir():
            raise ValueError(f"--features {run}: not a folder (expected a `qwen-interp features "
                             "compute` output folder or a features/ folder)")
        if (run / INDEX_NAME).is_file():
            return cls([_dictionary("clt", run, _run_names(run.parent).get("clt", run.name))])
        names = _run_names(run)
        found = [_dictionary(kind, run / sub, names.get(kind, kind))
                 for kind, sub in DICTIONARIES.items() if (run / sub / INDEX_NAME).is_file()]
        if not found:
            raise ValueError(f"--features {run}: no features/ or sae_features/ sidecar in it "
                             "(run `qwen-interp features compute` first)")
        return cls(found)

    def add_cached_release(self, scan: str) -> bool:
        """Use the Hugging Face cache's copy of ``scan``'s ``features/`` folder for the CLT, if
        there is one and no CLT sidecar is set. Never downloads."""
        if "clt" in self.dictionaries:
            return False
        folder = cached_release_features(scan)
        if folder is None:
            return False
        self.dictionaries["clt"] = _dictionary("clt", folder, scan)
        return True

    def clt_folder(self) -> Path | None:
        clt = self.dictionaries.get("clt")
        return clt.folder if clt else None

    def record(self, dictionary: str, layer: int, feature: int) -> dict:
        d = self.dictionaries.get(dictionary)
        if d is None:
            raise NotFound(f"no {dictionary} feature statistics loaded (known: "
                           f"{', '.join(sorted(self.dictionaries)) or 'none'})")
        if layer not in d.layers:
            raise NotFound(f"{d.name} has statistics for layers {list(d.layers)}, not {layer}")
        try:
            record = read_record(d.folder, layer, feature)
        except ValueError as exc:
            if "no feature" in str(exc):
                raise NotFound(str(exc)) from None
            raise
        record.setdefault("coactive", [])
        for partner in record["coactive"]:
            partner.setdefault("layer", layer)  # partners come from the same block
        record.update(dict=dictionary, layer=layer, feature=feature)
        return record

    def matches_scan(self, scan: str | None) -> bool:
        """Is the CLT sidecar the one for graphs of ``scan``? (Same release, by repo id.)"""
        clt = self.dictionaries.get("clt")
        return clt is not None and scan is not None and _same_release(clt.name, scan)


def _dictionary(kind: str, folder: Path, name: str) -> Dictionary:
    index = read_index(folder)  # parsed once, here; record reads reuse it
    layers = tuple(sorted(int(layer) for layer in index))
    width = len(index[str(layers[0])]["offsets"]) - 1 if layers else 0
    return Dictionary(kind, name, folder, layers, width)


def _run_names(run: Path) -> dict[str, str]:
    """Dictionary names from a run's ``run.json`` (the transcoder, the SAE releases)."""
    try:
        config = json.loads((run / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    config = config.get("config", config)
    names = {}
    if config.get("transcoder"):
        names["clt"] = str(config["transcoder"])
    releases = sorted({str(pair[0]) for pair in config.get("saes") or []})
    if releases:
        names["sae"] = ", ".join(releases)
    return names


def release_repo(scan: str) -> tuple[str, str]:
    """(repo id, folder prefix) of a graph's scan in the viewer's ``repo[@rev][//path]`` form."""
    repo, _, rest = scan.partition("//")
    path = rest.split("@")[0] if rest else ""
    return repo.split("@")[0], path


def _same_release(a: str, b: str) -> bool:
    def canonical(name: str) -> str:
        import qwen_interp
        repo = release_repo(name)[0]
        try:
            return qwen_interp.registry().transcoder_release(repo).repo_id
        except Exception:  # not a registered release or alias: compare as given
            return repo
    return canonical(a) == canonical(b)


def cached_release_features(scan: str) -> Path | None:
    """The ``features/`` folder of ``scan``'s Hub repo in the local cache, if it is there."""
    if scan.startswith(("/", "./")):
        return None
    from huggingface_hub import try_to_load_from_cache
    repo, prefix = release_repo(scan)
    if not repo or repo.count("/") != 1:
        return None
    filename = f"{prefix}/features/{INDEX_NAME}" if prefix else f"features/{INDEX_NAME}"
    found = try_to_load_from_cache(repo, filename)
    return Path(found).parent if isinstance(found, str) else None
