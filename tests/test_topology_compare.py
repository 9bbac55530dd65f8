"""The side-by-side benchmark (benchmarks/topology_compare.py) in its --small mode: each (path,
n) ran in its own process, both paths made maps at every resolution, and the ratios are the
ones its numbers give; a measurement past the time limit is recorded as timed out and the
path's larger sizes are not run. The full run is made by hand; its result is
benchmarks/results/topology_compare.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "topology_compare.py"


def run_benchmark(out: Path, *flags: str) -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(out), *flags],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.subprocess
def test_small_compare_measures_both_paths(tmp_path):
    result = run_benchmark(tmp_path / "result.json")
    assert result["d"] == 64 and result["sizes"] == [500, 2000]
    assert [r["n"] for r in result["rows"]] == [500, 2000]
    assert [(r["path"], r["n"]) for r in result["runs"]] == [
        ("ours", 500), ("plain", 500), ("ours", 2000), ("plain", 2000)]
    for run in result["runs"]:
        assert run["status"] == "ok", run
        assert run["vectors_bytes"] == run["n"] * 64 * 4
        assert run["peak_rss_bytes"] >= run["rss_after_vectors_bytes"] > 0
        assert [lv["resolution"] for lv in run["levels"]] == [4, 8, 16]
        assert all(lv["nodes"] > 0 for lv in run["levels"]), run["levels"]
        assert run["eps"] > 0 and run["seconds"]["total"] > 0
        assert len(run["loadavg_before"]) == 3
    plain = [run for run in result["runs"] if run["path"] == "plain"]
    assert all({"lens", "eps", "map_4", "map_8", "map_16"} <= set(r["seconds"]) for r in plain)
    assert all(r["eps_space_dims"] == 64 for r in plain)  # DBSCAN clusters in all d coordinates
    # separate processes: each has its own interpreter, so each reports its own peak
    assert len({run["peak_rss_bytes"] for run in result["runs"]}) > 1
    for row in result["rows"]:
        ours, plain_row = row["ours"], row["plain"]
        assert row["time_plain_over_ours"] == pytest.approx(
            plain_row["seconds"] / ours["seconds"], abs=0.01)
        assert row["peak_plain_over_ours"] == pytest.approx(
            plain_row["peak_rss_bytes"] / ours["peak_rss_bytes"], abs=0.01)
        assert len(ours["nodes"]) == len(plain_row["nodes"]) == 3
    assert len(result["loadavg"]["start"]) == 3
    assert result["machine"]["kmapper"] == "2.1.0"


@pytest.mark.subprocess
def test_time_limit_records_timeout_and_skips_larger_sizes(tmp_path):
    # 0.5 s is shorter than the interpreter's imports, so the first measurement of each path
    # is killed and its larger size is not run
    result = run_benchmark(tmp_path / "result.json", "--limit-s", "0.5")
    statuses = [(r["path"], r["n"], r["status"]) for r in result["runs"]]
    assert statuses == [("ours", 500, "timed out after 0.5 s"),
                        ("plain", 500, "timed out after 0.5 s"),
                        ("ours", 2000, "not run: timed out after 0.5 s at n=500"),
                        ("plain", 2000, "not run: timed out after 0.5 s at n=500")]
    assert all(r["time_plain_over_ours"] is None for r in result["rows"])
