"""``qwen-interp topology``: Mapper graphs of dictionary features (src/qwen_interp/apps/topology).

Planted structure, with the measures stated:

- clusters: features drawn around k = 5 random centres. Agreement = the adjusted Rand index
  (scikit-learn's ``adjusted_rand_score``) between the planted labels and the connected
  component of the Mapper graph holding each feature (every feature must be in some node), and
  node purity (share of a node's features from its majority cluster). Both must be 1.0.
- loop: features on a circle in a random plane of R^64 plus noise, a 1-d lens (PC1): at every
  resolution the graph is connected with exactly one independent cycle (E - V + C = 1).
- co-firing groups: a features-compute table whose ``coactive`` lists plant groups of 8
  features; each group's features all lie in one node, and no node mixes groups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from browser import check_not_blank
from helpers import stand_in_dictionaries

from qwen_interp.apps.topology.build import Settings, map_features
from qwen_interp.apps.topology.vectors import clt_vectors, from_array, sae_vectors

D = 64


def planted_clusters(k=5, per=200, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, D)) * 4
    x = np.concatenate([c + rng.standard_normal((per, D)) * 0.3 for c in centres])
    return x.astype(np.float32), np.repeat(np.arange(k), per)


def planted_loop(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, n)
    plane = np.linalg.qr(rng.standard_normal((D, 2)))[0]
    x = (np.c_[np.cos(theta), np.sin(theta)] * 5) @ plane.T + rng.standard_normal((n, D)) * 0.05
    return x.astype(np.float32)


def component_of_each_point(level, n):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    e = np.array([(a, b) for a, b, _ in level.edges], dtype=int).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(len(level.nodes),) * 2)
    _, comp = connected_components(graph, directed=False)
    out = np.full(n, -1)
    for i, members in enumerate(level.nodes):
        out[members] = comp[i]
    return out


@pytest.mark.parametrize("landmarks", [8192, 100], ids=["every-point", "kmeans-landmarks"])
def test_planted_clusters_are_recovered(landmarks):
    from sklearn.metrics import adjusted_rand_score
    x, y = planted_clusters()
    tmap = map_features(from_array(x), Settings(resolutions=(2, 4, 8), landmarks=landmarks))
    assert tmap.landmarks == min(landmarks, len(x))
    for level in tmap.levels:
        comp = component_of_each_point(level, len(x))
        assert (comp >= 0).all(), "every feature lies in some node"
        assert adjusted_rand_score(y, comp) == 1.0
        assert level.components == 5
        purity = [np.bincount(y[m]).max() / len(m) for m in level.nodes]
        assert min(purity) == 1.0


@pytest.mark.parametrize("landmarks", [8192, 200], ids=["every-point", "kmeans-landmarks"])
def test_planted_loop_is_one_cycle(landmarks):
    tmap = map_features(from_array(planted_loop()),
                        Settings(lens_dims=1, resolutions=(5, 10, 20), landmarks=landmarks))
    for level in tmap.levels:
        assert level.components == 1
        assert level.cycle_rank == 1, (level.resolution, len(level.nodes), len(level.edges))
        assert len(level.nodes) >= 2 * level.resolution - 2  # two arcs over inner intervals


def test_clusters_without_a_loop_have_no_cycle_with_a_1d_lens():
    x, _ = planted_clusters()
    tmap = map_features(from_array(x), Settings(lens_dims=1, resolutions=(3, 6)))
    assert [lv.cycle_rank for lv in tmap.levels] == [0, 0]


def test_resolutions_nest():
    x, _ = planted_clusters()
    tmap = map_features(from_array(x), Settings(resolutions=(2, 4, 8)))
    coarse_sets = None
    for level in tmap.levels:
        assert len(level.parents) == len(level.nodes) == len(level.contained)
        if coarse_sets is None:
            assert level.parents == [None] * len(level.nodes)
        else:
            for members, parent, contained in zip(level.nodes, level.parents, level.contained):
                assert contained and parent is not None
                assert set(members.tolist()) <= coarse_sets[parent]
        coarse_sets = [set(m.tolist()) for m in level.nodes]


def test_resolutions_must_divide():
    from qwen_interp.apps.topology.mapper import check_resolutions
    assert check_resolutions([3, 6, 12]) == (3, 6, 12)
    for bad in ([4, 6], [8, 4], [0, 2], []):
        with pytest.raises(ValueError, match="resolutions"):
            check_resolutions(bad)


def test_streamed_pca_matches_numpy_svd_dense_and_sparse():
    from scipy.sparse import csr_matrix

    from qwen_interp.apps.topology.reduce import array_chunks, randomized_pca
    rng = np.random.default_rng(1)
    scales = np.r_[[9.0, 7.0, 5.0, 3.0], np.full(36, 0.2)]
    x = (rng.standard_normal((2000, 40)) * scales + 2.0).astype(np.float32)
    pca = randomized_pca(array_chunks(x, 333), 4)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    cos = np.abs(np.sum(pca.components * vt[:4], axis=1))
    assert np.all(cos > 0.9999)
    np.testing.assert_allclose(pca.variance, s[:4] ** 2 / 1999, rtol=1e-4)
    np.testing.assert_allclose(pca.explained_ratio.sum(), (s[:4] ** 2).sum() / (s ** 2).sum(),
                               rtol=1e-4)
    np.testing.assert_allclose(np.abs(pca.scores), np.abs(xc @ vt[:4].T), atol=2e-3)
    sparse = randomized_pca(array_chunks(csr_matrix(x), 500), 4)
    np.testing.assert_allclose(sparse.scores, pca.scores, atol=2e-3)


def write_coactive_table(run: Path, groups: int = 6, size: int = 8, seed: int = 0) -> list:
    """A features-compute run folder whose tables/clt.parquet plants co-firing groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rng = np.random.default_rng(seed)
    width = groups * size
    order = rng.permutation(width)  # groups scattered over the feature ids
    group_of = np.empty(width, dtype=int)
    planted = []
    for g in range(groups):
        ids = order[g * size:(g + 1) * size]
        group_of[ids] = g
        planted.append(sorted(ids.tolist()))
    rows = {"layer": [], "feature": [], "coactive": []}
    for f in range(width):
        mates = [p for p in planted[group_of[f]] if p != f]
        partners = [{"feature": int(p), "count": int(rng.integers(5, 10))} for p in mates]
        rows["layer"].append(0)
        rows["feature"].append(f)
        rows["coactive"].append(partners)
    table = pa.table({"layer": pa.array(rows["layer"], pa.int32()),
                      "feature": pa.array(rows["feature"], pa.int32()),
                      "coactive": pa.array(rows["coactive"], type=pa.list_(pa.struct(
                          [("feature", pa.int32()), ("count", pa.int32())])))})
    (run / "tables").mkdir(parents=True)
    pq.write_table(table, run / "tables" / "clt.parquet")
    return planted


def test_cofiring_groups_land_in_the_same_nodes(tmp_path):
    from qwen_interp.apps.topology.coactivation import coactivation_profiles
    planted = write_coactive_table(tmp_path)
    vectors = coactivation_profiles(tmp_path)
    assert (vectors.n, vectors.source) == (48, "coactivation")
    # k below the group size: a feature's k-th neighbour is a group mate, so eps is a within-group
    # distance (with k >= 8 it would be the distance between groups, and all would merge)
    tmap = map_features(vectors, Settings(dims=8, k=4, resolutions=(2, 4), min_size=2))
    group = {f: g for g, ids in enumerate(planted) for f in ids}
    for level in tmap.levels:
        for ids in planted:
            assert any(set(ids) <= set(m.tolist()) for m in level.nodes), (level.resolution, ids)
        for members in level.nodes:
            assert len({group[f] for f in members.tolist()}) == 1


def test_coactivation_needs_a_table(tmp_path):
    from qwen_interp.apps.topology.coactivation import coactivation_profiles
    with pytest.raises(ValueError, match="tables/clt.parquet"):
        coactivation_profiles(tmp_path)
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "clt.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a feature-statistics table"):
        coactivation_profiles(tmp_path)


# --- real dictionaries ------------------------------------------------------------------------
def test_vectors_of_a_hub_clt_and_a_saelens_sae(qwen_offline_hub, qwen_registry):
    import torch
    from circuit_tracer.utils import hf_utils
    from sae_lens import SAE

    import qwen_interp  # noqa: F401
    from qwen_interp.apps.topology.vectors import load_clt
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        lazy = load_clt("bluelight-qwen3-1.7b")
        eager, _ = hf_utils.load_transcoder_from_hub("bluelight-qwen3-1.7b", dtype=torch.float32,
                                                     lazy_encoder=False, lazy_decoder=False)
        n_layers, width = eager.n_layers, eager.d_transcoder
        dec = np.concatenate(list(clt_vectors(lazy, "decoder", chunk=5).chunks()))
        want = np.concatenate([eager.W_dec[l].sum(dim=1).detach().numpy()
                               for l in range(n_layers)])
        np.testing.assert_allclose(dec, want, rtol=1e-6, atol=1e-6)
        own = np.concatenate(list(clt_vectors(lazy, "decoder", decoder="own", layers=[1])
                                  .chunks()))
        np.testing.assert_array_equal(own, eager.W_dec[1][:, 0].detach().numpy())
        enc = clt_vectors(lazy, "encoder", layers=[0, 2], chunk=7)
        assert (enc.n, enc.dim, enc.feature(width + 3)) == (2 * width, eager.d_model, (2, 3))
        np.testing.assert_array_equal(np.concatenate(list(enc.chunks())), np.concatenate(
            [eager.W_enc[0].detach().numpy(), eager.W_enc[2].detach().numpy()]))
        tmap = map_features(clt_vectors(lazy, "decoder"), Settings(dims=4, resolutions=(2, 4)))
        assert sum(len(m) for m in tmap.levels[0].nodes) >= 1
        with pytest.raises(ValueError, match="--layers 9"):
            clt_vectors(lazy, "decoder", layers=[9])
        saes = {l: SAE.from_pretrained(release.release, f"layer{l}", device="cpu")
                for l in (0, 1)}
        dec = sae_vectors(saes, "decoder", name=release.release)
        np.testing.assert_array_equal(np.concatenate(list(dec.chunks())), np.concatenate(
            [saes[l].W_dec.detach().numpy() for l in (0, 1)]))
        enc = sae_vectors(saes, "encoder")
        np.testing.assert_array_equal(np.concatenate(list(enc.chunks()))[:3],
                                      saes[0].W_enc[:, :3].T.detach().numpy())
        assert dec.dictionary == "sae" and dec.feature(dec.width) == (1, 0)


# --- export -----------------------------------------------------------------------------------
def test_json_and_png_export(tmp_path):
    from qwen_interp.apps.topology.export import read_map, write_map
    from qwen_interp.apps.topology.labels import label_nodes
    x, y = planted_clusters()
    tmap = map_features(from_array(x, layers=range(4), name="planted"),
                        Settings(resolutions=(2, 4)))
    label_nodes(tmap)
    json_path, png_path = write_map(tmap, tmp_path / "out", "planted")
    data = read_map(json_path)
    assert data["n_features"] == 1000 and data["dictionary"]["width"] == 250
    for level, saved in zip(tmap.levels, data["levels"]):
        assert saved["n_nodes"] == len(saved["nodes"]) == len(level.nodes)
        assert saved["cycle_rank"] == level.cycle_rank
        for node, members in zip(saved["nodes"], level.nodes):
            assert node["members"] == members.tolist()
            layers = np.asarray(members) // 250
            assert node["layers"] == {str(l): int((layers == l).sum()) for l in set(layers)}
            assert node["label"].startswith(f"L{node['dominant_layer']}")
    check_not_blank(png_path)
    with pytest.raises(ValueError, match="--name"):
        write_map(tmap, tmp_path, "../escape")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a topology map"):
        read_map(tmp_path / "other.json")


# --- command line -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--resolutions", "4,6"], "multiple"),
    (["--resolutions", "a"], "--resolutions"),
    (["--overlap", "1.5"], "--overlap"),
    (["--lens-dims", "0"], "--lens-dims"),
    (["--eps", "-1"], "--eps"),
    (["--source", "coactivation"], "--features"),
    (["--features", "/nonexistent/run"], "/nonexistent/run"),
    (["--name", "a/b"], "--name"),
    (["--layers", "x"], "--layers"),
    (["--sae", "nolayers"], "--sae"),
])
def test_cli_errors_are_one_line(args, words, capsys, tmp_path, monkeypatch):
    from qwen_interp.apps.cli import main
    monkeypatch.chdir(tmp_path)
    code = main(["topology", *args])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "topology_out").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_on_the_demo_as_the_readme_shows(qwen_demo_cache, tmp_path):
    env = {**os.environ, "QWEN_INTERP_CACHE": str(qwen_demo_cache)}
    for key in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        env.pop(key, None)
    script = Path(sys.executable).with_name("qwen-interp")  # the console script, as typed
    proc = subprocess.run([str(script), "topology"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "offline demo" in proc.stdout
    data = json.loads((tmp_path / "topology_out" / "clt-decoder.json").read_text())
    assert data["n_features"] == 4 * 256 and data["dim"] == 64
    assert data["dictionary"]["name"] == "bluelightai/clt-qwen3-1.7b-base-20k"
    assert [lv["resolution"] for lv in data["levels"]] == [4, 8, 16]
    for level in data["levels"]:
        assert f"resolution {level['resolution']}: {level['n_nodes']} nodes" in proc.stdout
    check_not_blank(tmp_path / "topology_out" / "clt-decoder.png")
    assert proc.stderr.strip() == "", proc.stderr
