"""``qwen-interp overlap``: the coverage matrix equals a hand computation on hand-made activation
sets; the command on the demo with the example datasets (its numbers re-derived from its own
feature sets); Ray gives the same files as in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "applications" / "overlap"
README_DATASETS = [f"{name}={EXAMPLES / name}.txt"
                   for name in ("presidents", "prime_ministers", "currencies", "countries")]


def pooled(n_docs: int, width: int, fires: dict[int, list[tuple[int, float]]]) -> sp.csr_matrix:
    """A documents x features matrix: ``fires[feature] = [(doc, activation), ...]``."""
    m = np.zeros((n_docs, width), np.float32)
    for feature, cells in fires.items():
        for doc, value in cells:
            m[doc, feature] = value
    return sp.csr_matrix(m)


# A: 4 documents, B: 6, C: 2. Features 0-7.
HAND = {
    "A": pooled(4, 8, {0: [(0, 1.0), (1, 2.0), (2, 0.5)], 1: [(0, 3.0)],
                       2: [(0, 1.0), (1, 1.0), (2, 1.0), (3, 1.0)], 5: [(1, 0.3), (2, 0.3)]}),
    "B": pooled(6, 8, {0: [(0, 1.0), (5, 1.0)], 2: [(3, 2.0)], 3: [(0, 1.0), (1, 1.0)],
                       5: [(0, 0.9), (1, 0.9), (2, 0.9)], 7: [(4, 4.0), (5, 0.1)]}),
    "C": pooled(2, 8, {1: [(0, 1.0)], 2: [(0, 1.0), (1, 1.0)], 6: [(1, 0.2)]}),
}


def test_min_docs_rule():
    from qwen_interp.apps.applications.overlap import min_docs_for
    assert min_docs_for(4, None, 0.5) == 2 and min_docs_for(6, None, 0.5) == 3
    assert min_docs_for(100, None, 0.01) == 1 and min_docs_for(101, None, 0.01) == 2
    assert min_docs_for(5, None, 0.0) == 1 and min_docs_for(5, 4, 0.9) == 4


@pytest.mark.parametrize("threshold, min_docs, min_fraction, sets", [
    # every feature that fires at all, in one document or more
    (0.0, 1, 0.0, {"A": {0, 1, 2, 5}, "B": {0, 2, 3, 5, 7}, "C": {1, 2, 6}}),
    # above 0.4: A loses 5 (0.3), C loses 6 (0.2); B keeps 7 (4.0 in doc 4)
    (0.4, 1, 0.0, {"A": {0, 1, 2}, "B": {0, 2, 3, 5, 7}, "C": {1, 2}}),
    # in half the documents: A (4 docs) needs 2, B (6) needs 3, C (2) needs 1
    (0.0, None, 0.5, {"A": {0, 2, 5}, "B": {5}, "C": {1, 2, 6}}),
])
def test_matrix_equals_hand_computation(threshold, min_docs, min_fraction, sets):
    from qwen_interp.apps.applications.overlap import overlap_from_pooled
    result = overlap_from_pooled(HAND, threshold=threshold, min_docs=min_docs,
                                 min_fraction=min_fraction, repeats=0)
    got = {name: set(np.flatnonzero(mask).tolist()) for name, mask in result["sets"].items()}
    assert got == sets
    matrix = result["matrix"]
    names = ["A", "B", "C"]
    assert matrix.names == names and matrix.sizes == [len(sets[n]) for n in names]
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            inter = len(sets[a] & sets[b])
            assert matrix.intersection[i, j] == inter
            assert matrix.coverage[i, j] == float(Fraction(inter, len(sets[a])))
            assert matrix.jaccard[i, j] == float(Fraction(inter, len(sets[a] | sets[b])))


def test_hand_case_numbers_and_most_redundant_pair():
    """Threshold 0, min 1 document: A = {0,1,2,5}, B = {0,2,3,5,7}, C = {1,2,6}."""
    from qwen_interp.apps.applications.overlap import overlap_from_pooled, record
    result = overlap_from_pooled(HAND, threshold=0.0, min_docs=1, repeats=0)
    rec = record(result)
    assert rec["coverage"] == [[1.0, 3 / 4, 2 / 4], [3 / 5, 1.0, 1 / 5], [2 / 3, 1 / 3, 1.0]]
    assert rec["intersection"] == [[4, 3, 2], [3, 5, 1], [2, 1, 3]]
    assert rec["jaccard"][0][1] == 3 / 6 and rec["jaccard"][1][2] == 1 / 7
    assert rec["most_redundant"] == {"covered": "A", "by": "B", "coverage": 0.75}
    assert [d["min_docs"] for d in rec["datasets"]] == [1, 1, 1]


def test_stability_of_full_samples_is_perfect_and_seeded():
    from qwen_interp.apps.applications.overlap import overlap_from_pooled
    full = overlap_from_pooled(HAND, min_docs=1, fraction=1.0, repeats=4)["stability"]
    assert full["spearman"] == [pytest.approx(1.0)] * 4 and full["top_pair_kept"] == 4
    assert full["spearman_mean"] == pytest.approx(1.0) and full["spearman_min"] == \
        pytest.approx(1.0)
    half = overlap_from_pooled(HAND, min_docs=1, fraction=0.5, repeats=20, seed=3)["stability"]
    again = overlap_from_pooled(HAND, min_docs=1, fraction=0.5, repeats=20, seed=3)["stability"]
    assert half == again and half["repeats"] == 20
    defined = [c for c in half["spearman"] if c is not None]
    assert len(defined) + half["spearman_undefined"] == 20
    assert all(-1 <= c <= 1 for c in defined) and 0 <= half["top_pair_kept"] <= 20
    assert half["spearman_min"] == min(defined) and half["spearman_mean"] == \
        pytest.approx(np.mean(defined))
    # a subsample of half the documents can lose features, so the matrix must change sometimes
    assert half["spearman_mean"] < 1.0


def test_stability_counts_by_hand():
    """Two repeats with a known draw: recompute the subsampled matrices here."""
    from scipy.stats import spearmanr

    from qwen_interp.apps.applications.overlap import overlap_from_pooled
    result = overlap_from_pooled(HAND, min_docs=1, fraction=0.5, repeats=2, seed=7)
    full = result["matrix"].coverage
    off = ~np.eye(3, dtype=bool)
    for r in range(2):
        sets = []
        for d, m in enumerate(HAND.values()):
            n = m.shape[0]
            rows = np.random.default_rng([7, r, d]).choice(n, max(1, round(n / 2)),
                                                           replace=False)
            sets.append(set(np.flatnonzero(np.asarray((m[np.sort(rows)] > 0).sum(0)).ravel())))
        cov = np.array([[len(a & b) / len(a) if a else np.nan for b in sets] for a in sets])
        sub, ref = cov[off], full[off]
        expected = None if len(set(sub)) < 2 else spearmanr(sub, ref).statistic
        got = result["stability"]["spearman"][r]
        assert (got is None and expected is None) or got == pytest.approx(expected)


def test_empty_set_gives_null_coverage():
    from qwen_interp.apps.applications.overlap import overlap_from_pooled, record
    empty = {"A": pooled(2, 4, {0: [(0, 1.0)]}), "Z": pooled(3, 4, {})}
    rec = record(overlap_from_pooled(empty, min_docs=1, repeats=0))
    assert rec["sizes"] == [1, 0] and rec["coverage"][1] == [None, None]
    assert rec["coverage"][0] == [1.0, 0.0]


def test_bad_input_is_one_line(cli, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a document\n")
    cases = [([one], "at least 2 datasets"),
             ([f"x={one}", f"x={one}"], "dataset name 'x' given twice"),
             ([one, tmp_path / "missing.txt"], "missing.txt"),
             ([one, f"e={tmp_path / 'empty.txt'}"], "dataset e:"),
             ([one, f"b={one}", "--subsample", "0"], "--subsample 0.0")]
    (tmp_path / "empty.txt").write_text("\n\n")
    for args, message in cases:
        out = cli("overlap", *args, "--out", tmp_path / "o")
        assert out.returncode == 1, (args, out.stdout)
        assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "o").exists()


# --- the command on the demo ---------------------------------------------------------------------
def run_cli(cache, cwd, *args):
    env = {**os.environ, "QWEN_INTERP_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # as Ray's CPU actors: the same float rounding
    proc = subprocess.run([sys.executable, "-m", "qwen_interp.apps.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=900, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def readme_run(qwen_demo_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("overlap")
    stdout = run_cli(qwen_demo_cache, work, "overlap", *README_DATASETS, "--min-fraction", "0.5",
                     "--out", "overlap_out")
    return work / "overlap_out", stdout


def test_readme_command_on_the_demo(readme_run):
    out, stdout = readme_run
    rec = json.loads((out / "overlap.json").read_text())
    sets = {name: set(features) for name, features in
            json.loads((out / "sets.json").read_text()).items()}
    names = ["presidents", "prime_ministers", "currencies", "countries"]
    assert rec["names"] == names and list(sets) == names
    for d in rec["datasets"]:
        assert d["documents"] == 24 and d["min_docs"] == 12 and d["tokens"] > 0
    # the matrix again, from the feature sets the command wrote
    for i, a in enumerate(names):
        assert rec["sizes"][i] == len(sets[a]) > 0
        for j, b in enumerate(names):
            assert rec["coverage"][i][j] == len(sets[a] & sets[b]) / len(sets[a])
    top = rec["most_redundant"]
    off = [(rec["coverage"][i][j], i, j) for i in range(4) for j in range(4) if i != j]
    assert top["coverage"] == max(off)[0]
    stab = rec["stability"]
    assert stab["repeats"] == 10 and stab["fraction"] == 0.5 and len(stab["spearman"]) == 10
    assert -1 <= stab["spearman_min"] <= stab["spearman_mean"] <= 1
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "overlap.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "prime_ministers" in page
    assert "most redundant:" in stdout and "stability (10 subsamples of 0.5)" in stdout


def test_ray_equals_in_process(readme_run, qwen_demo_cache, tmp_path):
    here, _ = readme_run
    run_cli(qwen_demo_cache, tmp_path, "overlap", *README_DATASETS, "--min-fraction", "0.5",
            "--out", "ray_out", "--ray", "--workers", "2", "--no-progress")
    for name in ("overlap.json", "sets.json"):
        assert json.loads((tmp_path / "ray_out" / name).read_text()) == \
            json.loads((here / name).read_text()), name
