"""The CLI: `doctor` reports the stack and what is bridged; `trace` (the main job) runs end to end
on the built-in offline demo and writes graph files circuit-tracer can read back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qwen_interp import compat


def run_cli(*args, env=None, tmp_path=None):
    """In a fresh interpreter: for what needs one (the demo sets HF_HOME before huggingface_hub
    is imported; QWEN_INTERP_PLUGINS is read at import). Everything else uses the ``cli``
    fixture, which runs the same ``main`` in this process."""
    import os
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "qwen_interp.apps.cli", *args],
                          capture_output=True, text=True, env=full_env, timeout=600, cwd=tmp_path)


def test_doctor_reports_stack_plugins_and_bridged_gaps(cli):
    out = cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "transformer-lens 3.2.1" in out.stdout
    assert "plugins: " in out.stdout and "transformerlens" in out.stdout
    # One line per adapter part (PartStatus.line()): "part: state (detail)".
    names = next(line for line in out.stdout.splitlines()
                 if "[transformerlens] model-names:" in line)
    assert "model-names: bridged (added: Qwen/Qwen3-1.7B-Base," in names, names
    assert "already upstream: Qwen/Qwen3-0.6B-Base" in names, names
    # Doctor imports each part's module, so parts of circuit-tracer's submodules report what
    # really happens on this install instead of "not imported".
    assert "[circuit_tracer] transcoder-loader: bridged" in out.stdout, out.stdout
    assert "[circuit_tracer_attribution] attribute-call: bridged" in out.stdout, out.stdout
    assert "not imported)" not in out.stdout, out.stdout
    assert "no known-bad versions installed" in out.stdout


@pytest.mark.subprocess
def test_doctor_with_plugins_disabled_says_so():
    out = run_cli("doctor", env={"QWEN_INTERP_PLUGINS": ""})
    assert out.returncode == 0
    assert "plugins: none (limited by QWEN_INTERP_PLUGINS)" in out.stdout
    assert "[transformerlens]" not in out.stdout


def test_known_bad_versions_are_flagged():
    # Each plugin owns the rules for its upstream (and registers them as a doctor check).
    import qwen_interp_circuit_tracer
    import qwen_interp_qwen3
    import qwen_interp_transformerlens
    rules = (*qwen_interp_transformerlens.KNOWN_BAD, *qwen_interp_qwen3.KNOWN_BAD,
             *qwen_interp_circuit_tracer.KNOWN_BAD)
    bad = compat.warnings_for({"transformers": "4.57.3", "transformer-lens": "4.3.0",
                               "nnsight": "0.8.1", "huggingface-hub": "0.36.2"}, rules)
    assert [w.split()[0] for w in bad] == ["transformer-lens", "transformers", "nnsight"]
    assert compat.warnings_for({"transformers": "4.57.1", "transformer-lens": "3.2.1",
                                "nnsight": "0.6.1"}, rules) == []
    # The qwen35 profile (no circuit-tracer): TL 3.9 and huggingface-hub 2.x are right there.
    assert compat.warnings_for({"transformers": "5.23.0", "transformer-lens": "3.9.0",
                                "huggingface-hub": "2.4.0"}, rules) == []
    assert len(compat.warnings_for({"transformer-lens": "3.9.0", "huggingface-hub": "2.4.0",
                                    "circuit-tracer": "0.5.0"}, rules)) == 2


@pytest.mark.subprocess
def test_trace_demo_end_to_end(tmp_path):
    out = run_cli("trace", "--out", str(tmp_path / "graphs"), "--batch-size", "64",
                  env={"QWEN_INTERP_CACHE": str(tmp_path / "cache")}, tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "top predictions:" in out.stdout and "top nodes by influence" in out.stdout
    graph_json = json.loads((tmp_path / "graphs" / "qwen-trace.json").read_text())
    assert graph_json["metadata"]["prompt_tokens"][1:4] == ["Fact", ":", " The"]
    assert {n["feature_type"] for n in graph_json["nodes"]} >= {"embedding", "logit"}
    assert graph_json["links"]

    from circuit_tracer.graph import Graph
    graph = Graph.from_pt(str(tmp_path / "graphs" / "qwen-trace.pt"))
    assert 0 < graph.logit_probabilities.sum().item() <= 1.0
    # The demo cache holds the checkpoints under their real repo ids.
    hub = tmp_path / "cache" / "demo-hf" / "hub"
    assert (hub / "models--Qwen--Qwen3-1.7B-Base" / "refs" / "main").is_file()
    assert (hub / "models--bluelightai--clt-qwen3-1.7b-base-20k" / "refs" / "main").is_file()


def test_saes_lists_releases_and_cache(tmp_path, cli):
    out = cli("saes", env={"QWEN_INTERP_CACHE": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert f"cache: {tmp_path}/saes" in out.stdout
    lines = [line for line in out.stdout.splitlines() if line.startswith("qwen-scope-")]
    assert len(lines) == 14
    assert any(line.startswith("qwen-scope-3-1.7b-base-w32k-l50 ") and "layers 28" in line
               for line in lines)


def _one_line_error(out, command="trace"):
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"qwen-interp {command}: error: "), lines[0]
    return lines[0]


def test_bad_arguments_fail_in_one_line_before_any_work(tmp_path, cli):
    env = {"QWEN_INTERP_CACHE": str(tmp_path / "cache")}
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    cases = {
        ("--batch-size", "0"): "argument --batch-size: must be at least 1, got 0",
        ("--max-feature-nodes", "lots"): "argument --max-feature-nodes: expected a whole number",
        ("--device", "cuda:7"): "--device cuda:7: ",
        ("--device", "tpu"): "--device 'tpu' is not a torch device",
        ("--out", str(blocked)): f"--out {blocked}: exists and is not a folder",
        ("--out", str(blocked / "graphs")): f"--out {blocked / 'graphs'}: cannot write there",
        ("--prompt", "  "): "the prompt is empty",
    }
    for args, message in cases.items():
        out = cli("trace", *args, env=env, cwd=tmp_path)
        assert message in _one_line_error(out), (args, out.stderr)
    # Nothing was started: no demo cache, no graph files.
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "graph_files").exists()


@pytest.mark.subprocess
@pytest.mark.slow
def test_checkpoint_and_setting_errors_are_one_line(tmp_path):
    """A bad setting and a transcoder that does not fit end in one line, like argument errors."""
    cache = tmp_path / "cache"
    out = run_cli("trace", "--out", str(tmp_path / "g"), env={"QWEN_INTERP_CACHE": str(cache),
                  "QWEN_INTERP_N_CTX": "abc"}, tmp_path=tmp_path)
    assert "QWEN_INTERP_N_CTX='abc': expected a whole number" in _one_line_error(out)
    # The demo Hub is built now; pair its model with a transcoder folder missing a layer.
    bad = tmp_path / "clt"
    snapshot = next((cache / "demo-hf" / "hub" / "models--bluelightai--clt-qwen3-1.7b-base-20k"
                     / "snapshots").iterdir())
    bad.mkdir()
    for f in snapshot.iterdir():
        if f.name != "W_enc_1.safetensors":
            (bad / f.name).write_bytes(f.read_bytes())
    out = run_cli("trace", "--model", "Qwen/Qwen3-1.7B-Base", "--transcoder", str(bad),
                  "--out", str(tmp_path / "g"),
                  env={"HF_HOME": str(cache / "demo-hf"), "HF_HUB_OFFLINE": "1"},
                  tmp_path=tmp_path)
    line = _one_line_error(out)
    assert str(bad) in line and "W_enc_1" in line, line
    assert not (tmp_path / "g" / "qwen-trace.json").exists()
