"""The scale benchmark (benchmarks/topology_scale.py) in its --small mode: it runs end to end,
reports every number it promises, and its map has the shape the settings ask for. The full-size
run (573,440 x 2,048) is run by hand; its result is benchmarks/results/topology_scale.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.subprocess
def test_small_benchmark_reports_time_and_memory(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "topology_scale.py"),
                           "--small", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["vectors"] == [28 * 512, 256]
    assert result["vectors_bytes"] == 28 * 512 * 256 * 4
    assert result["peak_rss_bytes"] > result["vectors_bytes"]
    assert result["peak_over_vectors"] == pytest.approx(
        result["peak_rss_bytes"] / result["vectors_bytes"], rel=1e-3)
    assert set(result["seconds"]) >= {"generate", "reduce", "mapper", "map_total"}
    assert [lv["resolution"] for lv in result["levels"]] == [4, 8, 16]
    assert all(lv["nodes"] > 0 and lv["all_contained"] for lv in result["levels"])
    assert result["met"]["time"] is True
