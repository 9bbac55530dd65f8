"""Topological feature maps (Mapper graphs) of CLT and SAE features (docs/topology.md).

Python API::

    from qwen_interp.apps.topology import Settings, map_features, clt_vectors, load_clt
    tmap = map_features(clt_vectors(load_clt("bluelight-qwen3-1.7b"), "decoder"), Settings())
    label_nodes(tmap, store)            # optional: FeatureStore.from_run("features_out")
    write_map(tmap, "topology_out", "clt-decoder")
"""

# Loaded on first use: the CLI imports .command for every run, and scikit-learn takes seconds.
_WHERE = {"Settings": "settings", "TopologyMap": "build", "map_features": "build",
          "coactivation_profiles": "coactivation", "read_map": "export", "write_map": "export",
          "label_nodes": "labels", "FeatureVectors": "vectors", "clt_vectors": "vectors",
          "from_array": "vectors", "load_clt": "vectors", "sae_vectors": "vectors"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
