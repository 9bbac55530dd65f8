"""The README's commands, run as a user types them: through the shell, from a fresh folder,
relative paths, no extra flags. The commands are read from the README itself (the same reader
`.ci/run` uses), so a command added to the README without a test here fails
`test_every_readme_command_is_tested`."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's console scripts: qwen-interp, circuit-tracer


def _readme():
    spec = importlib.util.spec_from_file_location("readme_commands",
                                                  ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, (ROOT / "README.md").read_text(encoding="utf-8")


def shell(command: str, cwd: Path, env: dict | None = None, timeout: int = 600):
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                **(env or {})}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


# README command (comments stripped) -> what its output must contain, on the built-in default.
ON_DEFAULT = {
    "qwen-interp models": ["models:", "Qwen/Qwen3-1.7B-Base", "bluelightai/clt-qwen3-1.7b-base-20k",
                           "qwen-scope-3-1.7b-base-w32k-l50"],
    "qwen-interp saes": ["qwen-scope-3-1.7b-base-w32k-l50", "layers 28"],
    "qwen-interp doctor": ["plugins:", "upstream gaps bridged:", "no known-bad versions installed"],
    "qwen-interp patches list": ["qwen3-base-names"],
    "qwen-interp patches check transformer-lens": ["qwen3-base-names", " ok"],
    "qwen-interp patches render transformer-lens": ["+++ b/transformer_lens/supported_models.py",
                                                    "Qwen/Qwen3-1.7B-Base"],
}
# Commands tested elsewhere in this file, or that need what a test machine cannot have.
ELSEWHERE = {
    "qwen-interp trace": "test_trace_then_explore_from_an_empty_folder",
    "qwen-interp explore": "test_trace_then_explore_from_an_empty_folder",
    "qwen-interp explore --no-model": "test_features_from_a_folder_with_a_corpus",
    "qwen-interp explore --model Qwen/Qwen3-1.7B-Base "
    "--transcoder bluelightai/clt-qwen3-1.7b-base-20k --sae qwen-scope-3-1.7b-base-w32k-l50:6,12 "
    "--device cuda": "test_explore_on_real_checkpoints_fails_in_one_line_here",
    "qwen-interp trace --model Qwen/Qwen3-1.7B-Base "
    "--transcoder bluelightai/clt-qwen3-1.7b-base-20k "
    "--dtype bfloat16 --device cuda": "test_trace_on_real_checkpoints_fails_in_one_line_here",
    "qwen-interp study --auto-groups": "test_study_then_edited_groups_from_an_empty_folder",
    "qwen-interp topology": "test_topology_then_explore_it",
    "qwen-interp classify fit --train examples/applications/classify/seeds.jsonl --positive "
    "leader --out rule.json": "test_classify_commands_in_order",
    "qwen-interp classify eval --rule rule.json --test "
    "examples/applications/classify/heldout.jsonl": "test_classify_commands_in_order",
    "qwen-interp classify predict --rule rule.json --input "
    "examples/applications/classify/new_texts.csv --out predictions.jsonl":
        "test_classify_commands_in_order",
    "qwen-interp classify curve --train examples/applications/classify/seeds.jsonl --test "
    "examples/applications/classify/heldout.jsonl --positive leader --out classify_curve":
        "test_classify_commands_in_order",
    "qwen-interp overlap presidents=examples/applications/overlap/presidents.txt "
    "prime_ministers=examples/applications/overlap/prime_ministers.txt "
    "currencies=examples/applications/overlap/currencies.txt "
    "countries=examples/applications/overlap/countries.txt --min-fraction 0.5 --out overlap_out":
        "test_overlap_command",
    "qwen-interp anomalies examples/applications/anomalies/corpus.txt --top 5":
        "test_anomaly_commands",
    "qwen-interp anomalies --monitor sae/0:218,sae/0:332 --prompts "
    "examples/applications/anomalies/prompts.txt --suppress subtract --suppress-strength 16":
        "test_anomaly_commands",
    "qwen-interp synthesize examples/applications/synthesize/dataset.txt --prompts "
    "examples/applications/synthesize/prompts.txt --top 2 --strengths 8,32":
        "test_synthesize_command",
    "qwen-interp explore --topology topology_out": "test_topology_then_explore_it",
    "qwen-interp study --groups study_out/groups.yaml --strengths=-4,-2,-1,0,1 --out study_edited":
        "test_study_then_edited_groups_from_an_empty_folder",
    "qwen-interp study --model Qwen/Qwen3-1.7B-Base "
    "--transcoder bluelightai/clt-qwen3-1.7b-base-20k --auto-groups --device cuda "
    "--dtype bfloat16": "test_study_on_real_checkpoints_fails_in_one_line_here",
    "qwen-interp features compute --corpus corpus.jsonl":
        "test_features_from_a_folder_with_a_corpus",
    "qwen-interp features compute --corpus corpus.jsonl --ray":
        "test_features_from_a_folder_with_a_corpus",
    "qwen-interp features compute --model Qwen/Qwen3-1.7B-Base "
    "--transcoder bluelightai/clt-qwen3-1.7b-base-20k --sae qwen-scope-3-1.7b-base-w32k-l50:6,12 "
    "--corpus corpus.jsonl --device cuda --dtype bfloat16":
        "test_features_on_real_checkpoints_fails_in_one_line_here",
}


def _tool_commands() -> list[str]:
    module, text = _readme()
    return [line.split(" #")[0].strip() for line in module.all_commands(text)
            if line.startswith(("qwen-interp", "circuit-tracer"))]


def test_two_commands_are_the_readme_blocks():
    module, text = _readme()
    two = module.two_commands(text)
    assert two["main"].endswith("pip install -e . && qwen-interp trace")
    assert two["test"].endswith(
        'pip install -e ".[test]" && python -m pytest -q -n auto --dist loadfile')
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'bash -c "$main_job"' in ci and 'bash -c "$test_job"' in ci


def test_every_readme_command_is_tested():
    untested = [c for c in _tool_commands() if c not in ON_DEFAULT and c not in ELSEWHERE]
    assert untested == []


@pytest.mark.subprocess
@pytest.mark.parametrize("command", sorted(ON_DEFAULT))
def test_readme_command_on_the_builtin_default(command, tmp_path):
    assert command in _tool_commands(), f"{command!r} is no longer in the README"
    out = shell(command, tmp_path, env={"QWEN_INTERP_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stdout + out.stderr
    for marker in ON_DEFAULT[command]:
        assert marker in out.stdout, (marker, out.stdout[-2000:])
    assert "Traceback" not in out.stderr


@pytest.mark.subprocess
def test_trace_on_real_checkpoints_fails_in_one_line_here(tmp_path):
    """The README's real-checkpoint trace needs the Hub (or a filled HF cache) and a GPU; here it
    must end in one clear line, not a traceback, and write nothing."""
    command = next(c for c in ELSEWHERE if c.startswith("qwen-interp trace") and "cuda" in c)
    _fails_in_one_line_here(command, tmp_path, "qwen-interp trace: error: ")
    assert not (tmp_path / "graph_files" / "qwen-trace.json").exists()


def _fails_in_one_line_here(command: str, cwd: Path, prefix: str) -> None:
    """A real-checkpoint command on this machine (no Hub, an empty HF cache, no GPU): exit 1 and
    one line on stderr starting with ``prefix``, never a traceback."""
    out = shell(command, cwd, env={"HF_HOME": str(cwd / "hf"), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), out.stderr
    import torch
    if not torch.cuda.is_available():
        assert "no CUDA device" in lines[0]


def _get(url: str, seconds: float) -> bytes:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.subprocess
def test_trace_then_explore_from_an_empty_folder(tmp_path):
    """`qwen-interp trace`, no arguments, in an empty folder: exit 0 and the three files; then the
    `qwen-interp explore` it prints serves that graph, offline, until interrupted."""
    work = tmp_path / "work"
    work.mkdir()
    env = {"QWEN_INTERP_CACHE": str(tmp_path / "cache")}
    out = shell("qwen-interp trace", work, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    files = {p.name for p in (work / "graph_files").iterdir()}
    assert files == {"qwen-trace.json", "graph-metadata.json", "qwen-trace.pt"}
    meta = json.loads((work / "graph_files" / "graph-metadata.json").read_text())
    assert [g["slug"] for g in meta["graphs"]] == ["qwen-trace"]
    assert "explore them: qwen-interp explore  (then open http://127.0.0.1:8042/graph/" \
        in out.stdout

    with _serving("qwen-interp explore", work, env) as base:
        served_meta = json.loads(_get(f"{base}/graph/data/graph-metadata.json", 60))
        assert [(g["slug"], g["prompt"]) for g in served_meta["graphs"]] == \
            [(g["slug"], g["prompt"]) for g in meta["graphs"]]
        graph = json.loads((work / "graph_files" / "qwen-trace.json").read_text())
        served = json.loads(_get(f"{base}/graph/graph_data/qwen-trace.json", 60))
        assert served["nodes"] == graph["nodes"] and served["links"] == graph["links"]
        page = _get(f"{base}/graph/", 60).decode()
        assert "Attribution Graphs" in page and "https://" not in page
        info = json.loads(_get(f"{base}/api/info", 60))
        assert info["live"] and info["model"] == "Qwen/Qwen3-1.7B-Base"


@contextlib.contextmanager
def _serving(command: str, cwd: Path, env: dict):
    """Run a `qwen-interp explore` command as typed; yield its URL once it says it is serving;
    Ctrl-C it at the end, which must exit 0."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("explorer: serving "):
            line = server.stdout.readline()
            assert line, f"{command!r} exited before serving: {server.stderr.read()}"
        yield line.split()[2].rstrip("/")
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=60)
    assert code == 0, server.stderr.read()


def _write_corpus(folder: Path, n_docs: int = 40) -> None:
    words = "the cat sat on a warm mat while rain fell over quiet hills".split()
    with open(folder / "corpus.jsonl", "w") as fh:
        for i in range(n_docs):
            text = " ".join(words[(i + j) % len(words)] for j in range(5 + i % 17))
            fh.write(json.dumps({"text": text.capitalize() + "."}) + "\n")


@pytest.mark.slow
@pytest.mark.subprocess
def test_features_from_a_folder_with_a_corpus(tmp_path):
    """Both demo `features compute` commands, as typed, from a folder holding corpus.jsonl: the
    tables and the viewer sidecar appear, and Ray's numbers equal the single process's."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    plain = next(c for c in ELSEWHERE if c.endswith("--corpus corpus.jsonl"))
    on_ray = next(c for c in ELSEWHERE if c.endswith("--ray"))
    outs = {}
    for name, command in (("plain", plain), ("ray", on_ray)):
        work = tmp_path / name
        work.mkdir()
        _write_corpus(work)
        out = shell(command, work, env={"QWEN_INTERP_CACHE": str(tmp_path / "cache")})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Traceback" not in out.stderr
        assert "features: " in out.stdout and "40 documents used" in out.stdout
        assert "tok/s" in out.stderr  # the progress bar: throughput (and ETA) on stderr
        assert (work / "features_out" / "features" / "index.json.gz").is_file()
        outs[name] = pq.read_table(work / "features_out" / "tables" / "clt.parquet")
    assert outs["plain"].equals(outs["ray"])

    # The Explorer on that folder, files only: feature pages from the sidecar just written.
    explore = next(c for c in ELSEWHERE if c.endswith("explore --no-model"))
    with _serving(explore, tmp_path / "plain", {"QWEN_INTERP_CACHE": str(tmp_path / "cache")}) \
            as base:
        info = json.loads(_get(f"{base}/api/info", 60))
        assert not info["live"] and [d["id"] for d in info["dictionaries"]] == ["clt"]
        record = json.loads(_get(f"{base}/api/feature?dict=clt&layer=1&feature=0", 60))
        row = outs["plain"].filter(pc.and_(pc.equal(outs["plain"]["layer"], 1),
                                           pc.equal(outs["plain"]["feature"], 0))).to_pylist()[0]
        assert record["top_logits"] == row["top_logits"]
        assert record["activation_frequency"] == pytest.approx(row["frequency"])


@pytest.mark.subprocess
def test_features_on_real_checkpoints_fails_in_one_line_here(tmp_path):
    command = next(c for c in ELSEWHERE if "features compute" in c and "--device cuda" in c)
    _write_corpus(tmp_path)
    _fails_in_one_line_here(command, tmp_path, "qwen-interp features: error: ")
    assert not (tmp_path / "features_out" / "report.json").exists()


@pytest.mark.subprocess
def test_explore_on_real_checkpoints_fails_in_one_line_here(tmp_path):
    command = next(c for c in ELSEWHERE if c.startswith("qwen-interp explore --model"))
    _fails_in_one_line_here(command, tmp_path, "qwen-interp explore: error: ")


@pytest.mark.subprocess
def test_study_then_edited_groups_from_an_empty_folder(tmp_path, qwen_demo_cache):
    """The README's two study commands in a row, from an empty folder (the demo cache shared by
    the run, so the model is trained once per test run, not per test)."""
    first, edited = (c for c in ELSEWHERE
                     if c.startswith("qwen-interp study") and "--model" not in c)
    env = {"QWEN_INTERP_CACHE": str(qwen_demo_cache)}
    out = shell(first, tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ablations:" in out.stdout and "report: study_out/report.html" in out.stdout
    proposed = (tmp_path / "study_out" / "groups.yaml").read_text()
    out = shell(edited, tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    record = json.loads((tmp_path / "study_edited" / "study.json").read_text())
    assert record["grouping"]["how"] == "given (study_out/groups.yaml)"
    assert record["sweeps"][0]["strengths"] == [-4.0, -2.0, -1.0, 0.0, 1.0]
    assert (tmp_path / "study_edited" / "groups.yaml").read_text() == proposed


@pytest.mark.subprocess
def test_study_on_real_checkpoints_fails_in_one_line_here(tmp_path):
    command = next(c for c in ELSEWHERE if c.startswith("qwen-interp study") and "cuda" in c)
    _fails_in_one_line_here(command, tmp_path, "qwen-interp study: error: ")
    assert not (tmp_path / "study_out").exists()


@pytest.mark.subprocess
def test_topology_then_explore_it(tmp_path, qwen_demo_cache):
    """`qwen-interp topology` from an empty folder writes the demo CLT's map (JSON and PNG); the
    README's `explore --topology` command then lists and serves it, with its page offline."""
    first, served = (c for c in ELSEWHERE if "topology" in c)
    env = {"QWEN_INTERP_CACHE": str(qwen_demo_cache)}
    out = shell(first, tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "map: topology_out/clt-decoder.json" in out.stdout
    data = json.loads((tmp_path / "topology_out" / "clt-decoder.json").read_text())
    assert data["n_features"] == 4 * 256
    assert [level["resolution"] for level in data["levels"]] == [4, 8, 16]
    assert (tmp_path / "topology_out" / "clt-decoder.png").stat().st_size > 10_000
    with _serving(served, tmp_path, env) as base:
        listed = json.loads(_get(f"{base}/api/topology", 60))
        assert [m["name"] for m in listed["maps"]] == ["clt-decoder"]
        assert json.loads(_get(f"{base}/api/topology/map?name=clt-decoder", 60)) == data
        page = _get(f"{base}/topology", 60).decode()
        assert "/vendor/d3.min.js" in page and "https://" not in page


def _applications_commands(word: str) -> list[str]:
    return [c for c in ELSEWHERE if c.startswith(f"qwen-interp {word} ")]


def _clone_examples(tmp_path: Path) -> Path:
    """A folder holding a copy of the clone's examples/applications, where the README's
    application commands run as typed (their paths are relative to the clone's root)."""
    import shutil
    shutil.copytree(ROOT / "examples" / "applications", tmp_path / "examples" / "applications")
    return tmp_path


def _ok(command: str, cwd: Path, cache: Path) -> str:
    assert command in _tool_commands(), f"{command!r} is no longer in the README"
    out = shell(command, cwd, env={"QWEN_INTERP_CACHE": str(cache)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    return out.stdout


@pytest.mark.subprocess
def test_classify_commands_in_order(tmp_path, qwen_demo_cache):
    """fit, eval, predict and curve as typed: the rule is one readable line, English held-out
    data is separated perfectly and the other languages are reported apart."""
    work = _clone_examples(tmp_path)
    fit, evaluate, predict, curve = _applications_commands("classify")
    out = _ok(fit, work, qwen_demo_cache)
    rule = json.loads((work / "rule.json").read_text())
    assert rule["positive"] == "leader" and 1 <= len(rule["features"]) <= 5
    assert "rule: 'leader' if " in out and "F1=100.0%" in out
    out = _ok(evaluate, work, qwen_demo_cache)
    assert "lang=en    n=40" in out and "lang=fr" in out and "lang=zh" in out
    assert "F1=100.0%" in out.split("lang=en")[1].splitlines()[0]
    _ok(predict, work, qwen_demo_cache)
    rows = [json.loads(line) for line in (work / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["prediction"] in ("leader", "other") for r in rows)
    assert all(r["fired"] for r in rows if r["prediction"] == "leader")
    _ok(curve, work, qwen_demo_cache)
    assert (work / "classify_curve" / "curve.png").stat().st_size > 5_000
    curve_record = json.loads((work / "classify_curve" / "curve.json").read_text())
    assert [p["fraction"] for p in curve_record["points"]] == [0.1, 0.25, 0.5, 1.0]
    assert [p["seeds"][0] for p in curve_record["points"]] == [4, 10, 20, 40]
    assert curve_record["points"][-1]["recovered"] == pytest.approx(1.0)


@pytest.mark.subprocess
def test_overlap_command(tmp_path, qwen_demo_cache):
    """The four example datasets: a square coverage matrix with ones on the diagonal, each
    entry |A ∩ B| / |A| of the sets the run wrote."""
    work = _clone_examples(tmp_path)
    (command,) = _applications_commands("overlap")
    out = _ok(command, work, qwen_demo_cache)
    record = json.loads((work / "overlap_out" / "overlap.json").read_text())
    names = record["names"]
    assert names == ["presidents", "prime_ministers", "currencies", "countries"]
    sets = json.loads((work / "overlap_out" / "sets.json").read_text())
    assert "most redundant:" in out
    for i, a in enumerate(names):
        assert record["coverage"][i][i] == 1.0
        for j, b in enumerate(names):
            mine = set(_features_of(sets, a))
            assert record["coverage"][i][j] == pytest.approx(
                len(mine & set(_features_of(sets, b))) / len(mine))
    for name in ("heatmap.png", "overlap.html"):
        assert (work / "overlap_out" / name).stat().st_size > 1_000


def _features_of(sets: dict, name: str) -> list[str]:
    return sets[name]  # sets.json: dataset name -> its features' names


@pytest.mark.subprocess
def test_anomaly_commands(tmp_path, qwen_demo_cache):
    """The corpus command ranks features for both detectors; the monitor command sees the
    watched features fire on the demo's generations and suppression silences them."""
    work = _clone_examples(tmp_path)
    corpus, monitor = _applications_commands("anomalies")
    out = _ok(corpus, work, qwen_demo_cache)
    record = json.loads((work / "anomalies_out" / "anomalies.json").read_text())
    for detector in ("code-switching", "repetition"):
        result = record["detectors"][detector]
        assert result["flagged_tokens"] > 0 and result["ranking"]
        assert f"{detector}:" in out
    out = _ok(monitor, work, qwen_demo_cache)
    runs = json.loads((work / "anomalies_out" / "monitor.json").read_text())["runs"]
    plain, suppressed = runs
    assert not plain["suppressed"] and suppressed["suppressed"]
    assert plain["fires"]["sae/0:218"] > 0 and plain["fires"]["sae/0:332"] > 0
    assert suppressed["fires"] == {"sae/0:218": 0, "sae/0:332": 0}
    assert "suppressed (subtract):" in out


@pytest.mark.subprocess
def test_synthesize_command(tmp_path, qwen_demo_cache):
    """Every kept sample fires its target feature (the evidence is in the sample) on features
    that never fired on the dataset."""
    work = _clone_examples(tmp_path)
    (command,) = _applications_commands("synthesize")
    _ok(command, work, qwen_demo_cache)
    report = json.loads((work / "synthesize_out" / "report.json").read_text())
    assert len(report["targets"]) == 2 and all(report["targets_inactive"].values())
    samples = [json.loads(line) for line in
               (work / "synthesize_out" / "samples.jsonl").read_text().splitlines()]
    assert samples and len(samples) == report["kept"]
    assert all(s["feature"] in report["targets"] for s in samples)
    for sample in samples:  # it fires on a generated token, not on the prompt
        evidence = sample["evidence"]
        assert evidence["max_activation"] > 0
        assert all(f["position"] >= evidence["prompt_tokens"] for f in evidence["firing"])
