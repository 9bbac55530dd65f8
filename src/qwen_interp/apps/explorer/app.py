"""The Explorer's state and answers, independent of HTTP: graphs, feature records, live model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .store import LOCAL_SCAN_PREFIX, NO_FEATURES_SCAN, FeatureStore, GraphFolder, NotFound

# "L12/345", "12/345", "12:345", "clt 12 345", "sae 6/7", "sae L6 #7": dictionary, layer, feature.
_FEATURE_ID = re.compile(
    r"^\s*(?:(?P<dict>clt|sae)\b[\s:/-]*)?l?(?P<layer>\d+)\s*[/:\s,#-]\s*#?(?P<feature>\d+)\s*$",
    re.IGNORECASE)


class Explorer:
    """Everything ``qwen-interp explore`` serves.

    ``graphs``: a folder of graph files (``qwen-interp trace``); ``features``: a
    ``qwen-interp features compute`` run folder (or a ``features/`` folder); ``session``: a
    :class:`~qwen_interp.apps.session.Session` for Analyze / Compare / Steer and text search.
    Each is optional; what is missing is reported by ``info()`` and answered with an error."""

    def __init__(self, graphs: str | Path | None = None, features: str | Path | None = None,
                 session: Any = None, *, model: str | None = None,
                 transcoder: str | None = None, topology: str | Path | None = None) -> None:
        self.graphs = GraphFolder(graphs) if graphs is not None else None
        self.store = FeatureStore.from_run(features)
        self.session = session
        self.model_name = model
        self.transcoder_name = transcoder
        self._live = None
        self.topology = Path(topology) if topology is not None else None
        if self.graphs is not None:  # a release's features/ in the HF cache, for its graphs
            for graph in self.graphs.graphs():
                if graph.get("scan") and self.store.add_cached_release(graph["scan"]):
                    break

    @property
    def live(self):
        if self.session is None:
            return None
        if self._live is None:
            from .live import LiveModel
            self._live = LiveModel(self.session)
        return self._live

    # --- graphs ------------------------------------------------------------------------------
    def local_scan(self, scan: str | None) -> str:
        """The scan the viewer gets: this server's ``/features/`` when it holds that CLT's
        records, else a local path that answers 404 (never huggingface.co)."""
        if self.store.matches_scan(scan):
            return LOCAL_SCAN_PREFIX + str(scan)
        return NO_FEATURES_SCAN

    def graph_metadata(self) -> dict:
        if self.graphs is None:
            return {"graphs": []}
        meta = self.graphs.metadata()
        graphs = [{**g, "scan": self.local_scan(g.get("scan"))} for g in meta["graphs"]]
        return {**meta, "graphs": graphs}

    def graph(self, slug: str) -> dict:
        if self.graphs is None:
            raise NotFound("no graph folder given (qwen-interp explore --graphs DIR)")
        data = self.graphs.graph(slug)
        meta = data.get("metadata")
        if isinstance(meta, dict):
            data["metadata"] = {**meta, "scan": self.local_scan(meta.get("scan"))}
        return data

    # --- features ----------------------------------------------------------------------------
    def feature(self, dictionary: str, layer: int, feature: int) -> dict:
        return self.store.record(dictionary, layer, feature)

    def search(self, query: str) -> dict:
        match = _FEATURE_ID.match(query)
        features = []
        if match:
            kind = (match["dict"] or "clt").lower()
            layer, feature = int(match["layer"]), int(match["feature"])
            features.append({"dict": kind, "layer": layer, "feature": feature,
                             "url": f"/feature?dict={kind}&layer={layer}&feature={feature}"})
        return {"query": query, "features": features}

    # --- topology maps (qwen-interp topology) ------------------------------------------------
    def topology_maps(self) -> dict:
        """The maps in the topology folder: name, dictionary, source and per-level counts."""
        from qwen_interp.apps.topology.export import read_map
        maps = []
        if self.topology is not None:
            for path in sorted(self.topology.glob("*.json")):
                try:
                    data = read_map(path)
                except ValueError:
                    continue  # not a map: another tool's JSON in the same folder
                maps.append({"name": path.stem, "dictionary": data["dictionary"],
                             "source": data["source"], "n_features": data["n_features"],
                             "levels": [{"resolution": lv["resolution"],
                                         "n_nodes": lv["n_nodes"], "n_edges": lv["n_edges"]}
                                        for lv in data["levels"]]})
        return {"folder": str(self.topology) if self.topology else None, "maps": maps}

    def topology_map(self, name: str) -> dict:
        from qwen_interp.apps.topology.export import NAME, read_map
        if self.topology is None:
            raise NotFound("no topology folder given (qwen-interp explore --topology DIR)")
        path = self.topology / f"{name}.json"
        if not NAME.fullmatch(name) or not path.is_file():
            raise NotFound(f"no topology map {name!r} in {self.topology}")
        return read_map(path)

    # --- the page's header --------------------------------------------------------------------
    def info(self) -> dict:
        graphs = self.graph_metadata()["graphs"]
        return {
            "model": self.model_name,
            "transcoder": self.transcoder_name,
            "live": self.session is not None,
            "saes": sorted(self.session.saes) if self.session is not None else [],
            "dictionaries": [d.info() for d in self.store.dictionaries.values()],
            "graphs": [{"slug": g.get("slug"), "prompt": g.get("prompt"),
                        "scan": g.get("scan"), "url": f"/graph/?slug={g.get('slug')}"}
                       for g in graphs],
        }
