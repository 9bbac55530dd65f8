"""benchmarks/gpu_suite.py's verdicts, with stand-in steps (small scripts that write the records a
benchmark writes): a disagreement or a crash fails the run; on the GPU a step that does not fit
the call is skipped or stopped and recorded, not failed. The real benchmarks run in CI through
`bash benchmarks/gpu_suite.sh --smoke`."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

AGREE = [
    {"side": "upstream", "part": "seed", "load_s": 5.0, "attribute_s": 2.0, "nodes": 10,
     "active_features": 7, "host_peak_anon_during_gb": 2.0},
    {"side": "ours", "part": "seed", "load_s": 4.0, "attribute_s": 1.0, "nodes": 10,
     "active_features": 7, "host_peak_anon_during_gb": 0.5},
    {"part": "seed", "compare": True, "same_active_features": True,
     "same_selected_features": True, "selected": 4, "selected_in_both": 4, "same_logits": True,
     "common_nodes": 10, "nodes": 10, "max_abs_diff_over_max_abs": 1e-7},
]


@pytest.fixture
def suite(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks/gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_suite", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    monkeypatch.setenv("GPU_SUITE_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("GPU_SUITE_T0", raising=False)

    def run(mode: str, steps: list, *argv: str) -> tuple[int, list[dict], str]:
        monkeypatch.setattr(module, "smoke_steps" if mode == "smoke" else "gpu_steps",
                            lambda work: steps)
        # The probe of torch and the GPU (a child process importing torch) stands aside; on the
        # "GPU" it is what says a GPU is there.
        monkeypatch.setattr(module, "environment", lambda python: dict(
            date="2026-12-02T00:00:00+00:00", commit="abc", machine="m", torch="t",
            gpu="Fake GPU" if mode == "gpu" else "none (CPU)", probe_error=None))
        monkeypatch.setattr(sys, "argv", ["gpu_suite.py", *(["--smoke"] if mode == "smoke"
                                                              else []), *argv])
        rc = module.main()
        out = tmp_path / "out"
        rows = [json.loads(line) for line in (out / "gpu_suite.jsonl").read_text().splitlines()]
        return rc, rows, (out / "gpu_suite_table.md").read_text()

    def step(name: str, records: list[dict], budget_s: int = 60, expect_s: int = 0,
             extra: str = "") -> object:
        script = tmp_path / f"{name}.py"
        script.write_text(  # the records first, then ``extra`` (a crash, a hang)
            "import json, os, pathlib, time\n"
            "with open(pathlib.Path(os.environ['OUT']) / 'attribution_bench.jsonl', 'a') as f:\n"
            f"    for r in {records!r}:\n"
            "        f.write(json.dumps(r) + '\\n')\n"
            f"{extra}\n")
        return module.Step(name, str(script), [], budget_s, "attribution_bench.jsonl",
                           expect_s=expect_s)

    return run, step


def test_agreeing_records_pass_with_the_run_recorded(suite):
    run, step = suite
    rc, rows, table = run("smoke", [step("attribution", AGREE)])
    assert rc == 0
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["attribute() time"]["ratio"] == 2.0  # upstream 2.0 s / ours 1.0 s
    assert by_metric["max |ΔA| / max |A| on common nodes"]["check"]["ok"] is True
    for r in rows:
        assert {"date", "commit", "machine", "gpu", "torch", "command", "mode"} <= r.keys()
        assert r["mode"] == "smoke" and r["command"].endswith("attribution.py")
    assert "\\|ΔA\\|" in table and "**FAIL**" not in table  # pipes escaped for Markdown


@pytest.mark.parametrize("change", [{"same_active_features": False},
                                    {"max_abs_diff_over_max_abs": 0.5},
                                    {"selected_in_both": 3}])
def test_a_disagreement_fails_the_run(suite, change):
    run, step = suite
    records = AGREE[:2] + [dict(AGREE[2], **change)]
    rc, rows, table = run("smoke", [step("attribution", records)])
    assert rc == 1
    assert "**FAIL**" in table
    assert [r["metric"] for r in rows if "check" in r and not r["check"]["ok"]]


def test_a_crash_fails_the_run_and_keeps_what_it_logged(suite):
    run, step = suite
    rc, rows, _ = run("smoke", [step("attribution", AGREE[:1], extra="raise SystemExit(3)")])
    assert rc == 1
    assert rows[-1]["ours"] == "failed (exit 3)" and rows[-1]["check"]["ok"] is False
    assert {r["metric"]: r["upstream"] for r in rows}["attribute() time"] == 2.0


def test_a_crashed_side_fails_the_run(suite):
    run, step = suite
    records = [AGREE[0], {"side": "ours", "part": "seed", "failed": True, "returncode": 1},
               {"part": "seed", "compare": False, "no_graph_from": ["ours"]}]
    rc, rows, _ = run("smoke", [step("attribution", records)])
    assert rc == 1
    assert [r["ours"] for r in rows if r["metric"] == "ours side"] == ["failed (exit 1)"]


def test_on_the_gpu_steps_that_do_not_fit_are_recorded_not_failed(suite):
    run, step = suite
    slow = step("attribution", AGREE[:1], budget_s=2, extra="time.sleep(30)")  # ours unfinished
    later = step("model_load", [], budget_s=200, expect_s=100)  # more than the call has left
    rc, rows, _ = run("gpu", [slow, later], "--total-s", "60")
    assert rc == 0
    status = {r["benchmark"]: r["step_status"] for r in rows}
    assert status["attribution"] == "timed out after its 2 s budget"
    assert status["model_load"].startswith("skipped: expects ~100 s")
    assert all("check" not in r for r in rows)
    assert {r["metric"]: r["upstream"] for r in rows}["attribute() time"] == 2.0  # kept
