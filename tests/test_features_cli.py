"""``qwen-interp features compute`` as users run it: a SIGKILL midway and a resume equal an
uninterrupted run; bad input is one line; the sidecar serves every node of a real graph."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from test_features_stats import make_corpus, same_outputs

MODEL, CLT = "Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-1.7b"
SMALL = ["--ctx-len", "16", "--batch-size", "2", "--shard-batches", "1", "--top-k", "4",
         "--samples", "4", "--bins", "32", "--checkpoint-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def hub(qwen_offline_hub, qwen_registry):
    spec = qwen_registry.model(MODEL)
    qwen_offline_hub.transcoder(qwen_registry.transcoder_release(CLT), spec)
    return qwen_offline_hub


def features_cmd(corpus, out, *extra):
    return [sys.executable, "-m", "qwen_interp", "features", "compute", "--model", MODEL,
            "--transcoder", CLT, "--corpus", str(corpus), "--out", str(out), *SMALL, *extra]


def next_shard(out) -> int:
    from safetensors import safe_open
    try:
        with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as fh:
            return int(fh.metadata()["next_shard"])
    except (FileNotFoundError, OSError):
        return 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_midway_then_resume_equals_uninterrupted(hub, tmp_path):
    corpus = tmp_path / "docs.txt"
    make_corpus(corpus, n_docs=500)
    whole = subprocess.run(features_cmd(corpus, tmp_path / "whole"), capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    n_shards = next_shard(tmp_path / "whole")
    assert n_shards >= 20

    out = tmp_path / "killed"
    proc = subprocess.Popen(features_cmd(corpus, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while next_shard(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = next_shard(out)
    assert 3 <= killed_at < n_shards, "the kill must land midway"
    assert not (out / "report.json").exists()

    resumed = subprocess.run(features_cmd(corpus, out), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at shard {killed_at}" in resumed.stdout
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock")]
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / "whole" / "checkpoint.safetensors"), load_file(
        out / "checkpoint.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert same_outputs(tmp_path / "whole", out)


def test_bad_input_is_one_line(hub, cli, tmp_path):
    missing = cli("features", "compute", "--model", MODEL, "--transcoder", CLT, "--corpus",
                  str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert missing.returncode != 0
    assert missing.stderr.count("\n") == 1 and "nope.jsonl" in missing.stderr
    bad_sae = cli("features", "compute", "--model", MODEL, "--corpus", str(tmp_path),
                  "--sae", "no-layers", "--out", str(tmp_path / "o"))
    assert bad_sae.returncode == 1 and "RELEASE:LAYERS" in bad_sae.stderr
    assert bad_sae.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written for bad input


def test_other_settings_in_same_folder_refused(hub, cli, tmp_path):
    corpus = tmp_path / "docs.txt"
    make_corpus(corpus, n_docs=30)
    args = ["features", "compute", "--model", MODEL, "--transcoder", CLT, "--corpus",
            str(corpus), "--out", str(tmp_path / "o"), *SMALL]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "viewer sidecar:" in first.stdout and "tables" in first.stdout
    other = cli(*args[:-len(SMALL)], *SMALL[:-1], "--ctx-len", "32", "--no-progress")
    assert other.returncode == 1 and "other settings (ctx_len)" in other.stderr


@pytest.mark.slow
def test_every_node_of_a_graph_resolves_in_the_sidecar(hub, tmp_path):
    """A circuit-tracer graph of the same model + CLT: every feature node's panel data is in the
    sidecar, read the way the viewer reads it."""
    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.utils.create_graph_files import create_graph_files

    from qwen_interp.apps.features.collect import RunConfig
    from qwen_interp.apps.features.accumulators import StatsConfig
    from qwen_interp.apps.features.job import compute
    from helpers import SEED_PROMPT
    from viewer_features import load_feature_from_binary, validate_with_circuit_tracer

    corpus = tmp_path / "docs.txt"
    make_corpus(corpus, n_docs=40)
    corpus.write_text(corpus.read_text() + SEED_PROMPT + "\n")
    compute(RunConfig(model=MODEL, transcoder=CLT, corpus=str(corpus), ctx_len=16, batch_size=4,
                      shard_batches=2, stats=StatsConfig(top_k=4, samples=4, bins=32)),
            tmp_path / "run", device="cpu", progress=False)

    model = ReplacementModel.from_pretrained(MODEL, CLT, device="cpu")
    graph = attribute(SEED_PROMPT, model, max_n_logits=3, batch_size=64, verbose=False)
    create_graph_files(graph, slug="g", output_path=str(tmp_path / "graphs"), scan=CLT)
    import json
    nodes = json.loads((tmp_path / "graphs" / "g.json").read_text())["nodes"]
    features = [n for n in nodes if n["feature_type"] == "cross layer transcoder"]
    assert features
    for node in features:
        layer, feature, _ = node["node_id"].split("_")
        record = load_feature_from_binary(tmp_path / "run" / "features", node["feature"])
        validate_with_circuit_tracer(record)
        assert record["index"] == int(feature), node["node_id"]
        assert record["transcoder_id"] == CLT
        assert len(record["histogram"]) == 50 and len(record["quantile_values"]) == 100
        assert np.isfinite(record["act_max"])


def test_a_changed_corpus_is_not_mixed_into_a_run(hub, cli, tmp_path):
    corpus = tmp_path / "docs.txt"
    make_corpus(corpus, n_docs=20)
    args = ["features", "compute", "--model", MODEL, "--transcoder", CLT, "--corpus",
            str(corpus), "--out", str(tmp_path / "o"), *SMALL]
    assert cli(*args).returncode == 0
    with open(corpus, "a") as fh:
        fh.write("One more document appended later.\n")
    again = cli(*args)
    assert again.returncode == 1 and "other settings (corpus_files)" in again.stderr


def test_demo_with_a_hub_dataset_is_one_line(cli, tmp_path):
    out = cli("features", "compute", "--corpus", "hf:someone/dataset", "--out",
              str(tmp_path / "o"))
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "needs --model and --transcoder" in out.stderr
