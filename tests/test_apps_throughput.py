"""benchmarks/applications_throughput.py --small: it runs on the demo and writes a JSON record
of the documented shape with positive numbers (the numbers themselves are not asserted: they
depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("stats", "forward", "classify", "overlap")


def test_small_benchmark_writes_its_record(qwen_demo_cache, tmp_path):
    out = tmp_path / "applications_throughput.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "applications_throughput.py"), "--small",
         "--out", str(out)], capture_output=True, text=True, timeout=900,
        env={**os.environ, "QWEN_INTERP_CACHE": str(qwen_demo_cache), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["mode"] == "small" and record["documents"] == 48 and record["repeats"] == 2
    assert set(record["results"]) == set(MODES)
    for mode in MODES:
        r = record["results"][mode]
        assert len(r["seconds"]) == 2 and all(s > 0 for s in r["seconds"])
        assert r["tokens"] > 0 and r["median_s"] > 0 and r["tokens_per_s"] > 0
        assert abs(r["tokens_per_s"] - r["tokens"] / r["median_s"]) < 1e-6 * r["tokens_per_s"]
    # the three document-pass modes run the same documents: the same tokens
    assert len({record["results"][m]["tokens"] for m in ("forward", "classify", "overlap")}) == 1
    assert set(record["overhead_percent"]) == {"classify_vs_stats", "overlap_vs_stats",
                                               "classify_vs_forward", "overlap_vs_forward"}
    assert all(isinstance(v, float) for v in record["overhead_percent"].values())
    assert record["goal_percent"] == 10.0 and isinstance(record["within_goal"], bool)
    assert record["dictionaries"] == ["clt/0", "clt/1", "clt/2", "clt/3", "sae/0", "sae/1",
                                      "sae/2", "sae/3"]
    assert "| classify |" in proc.stdout and "overhead classify_vs_stats" in proc.stdout
