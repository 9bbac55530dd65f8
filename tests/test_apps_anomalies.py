"""``qwen-interp anomalies`` on the built-in demo with planted SAEs (``testing.planted``) at
layer 0, whose residual depends on the token alone there, so a planted feature is an exact
detector of its token types in any context:

- Han text inserted into English facts: the planted Han detector ranks first for
  code-switching, with significance, in-process and on local Ray alike;
- the monitor: a planted detector of " François" (the demo's greedy generations loop on it)
  fires exactly on the generated " François" tokens; suppressing it ends them.

The Python API runs in one fresh interpreter (``DRIVER``) with HF_HOME = the demo's cache
(huggingface_hub reads it at import, and this process already imported it); the command line
runs on the same planted SAEs (tests/test_readme_commands.py runs the README's commands).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import cli_on_demo, run_on_demo

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "applications" / "anomalies"

DRIVER = r'''
import json, sys, time
from pathlib import Path
import numpy as np, torch
from qwen_interp.apps import trace
from qwen_interp.apps.applications import anomalies as A, detectors as D
from qwen_interp.apps.applications.docpass import PassConfig
from qwen_interp.apps.applications.model import ModelConfig, load_session
from qwen_interp.apps.demo import facts as F
from qwen_interp.apps.testing.planted import plant_sae, text_tokens

out = Path(sys.argv[1])
ENGLISH = [f.prompt + f.answer + "." for f in F.office_facts()[::9]]
HAN = ["萨科齐", "美国总统", "法国总统", "德国总理", "首都巴黎"]
docs = [doc[:-1] + " " + HAN[i % len(HAN)] + "." if i % 3 == 0 else doc
        for i, doc in enumerate(ENGLISH)]
config = ModelConfig(trace.DEFAULT_MODEL, trace.DEFAULT_TRANSCODER, demo=True)
session = load_session(config, device="cpu", saes=[])
tok = session.model.tokenizer
with torch.no_grad():  # planted.py's promote direction reads W_U, which requires grad
    # the Han types as they are tokenized in the documents (after a space)
    han = plant_sae(session.model, 0, out / "han",
                    targets=text_tokens(tok, [" " + h for h in HAN]),
                    others=text_tokens(tok, ENGLISH), first_token=F.BOS_ID)
session.add_sae(han.sae)
t = time.time()
local = A.find_anomaly_features(session, docs, detectors=["code-switching"],
                                model_config=config, progress=False)
t_local = time.time() - t
t = time.time()
ray = A.find_anomaly_features(session, docs, detectors=["code-switching"], model_config=config,
                              ray_address="local", workers=2, progress=False)
t_ray = time.time() - t
# the truth, token by token: Han tokens (and the period after them) are the flagged ones
flagged = []
for doc in docs:
    ids = tok(doc, add_special_tokens=False)["input_ids"]
    flagged.append(D.code_switching_mask(tok, ids).tolist())
target_ids = sorted(text_tokens(tok, HAN))

# the monitor: a detector of " François" that promotes it
others = text_tokens(tok, [f.prompt + f.answer for f in F.corpus()]) | text_tokens(tok, ENGLISH)
francois = text_tokens(tok, [" François"])
with torch.no_grad():
    loop = plant_sae(session.model, 0, out / "francois", targets=francois, others=others,
                     first_token=F.BOS_ID, promote=True)
session.add_sae(loop.sae)  # replaces the Han SAE at layer 0
prompts = [line for line in (Path(sys.argv[2]) / "prompts.txt").read_text().splitlines() if line]
runs = {mode: A.monitor(session, prompts, ["sae/0:0"], suppress=mode, suppress_strength=16,
                        max_new_tokens=12) for mode in ("subtract", "clamp")}
from dataclasses import asdict
print(json.dumps({
    "local": local.to_json(), "ray": ray.to_json(), "t_local": t_local, "t_ray": t_ray,
    "docs": docs, "flagged": flagged, "target_ids": target_ids,
    "francois": sorted(francois),
    "monitor": {m: [asdict(r) for r in rs] for m, rs in runs.items()}}, ensure_ascii=False))
'''


@pytest.fixture(scope="module")
def driven(qwen_demo_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("anomalies")
    return run_on_demo(DRIVER, str(work), str(EXAMPLES), cache=qwen_demo_cache), work


def test_planted_han_detector_ranks_first_for_code_switching(driven):
    data, _ = driven
    result = data["local"]["detectors"]["code-switching"]
    best = result["ranking"][0]
    assert best["feature"] == "sae/0:0", result["ranking"][:3]
    assert best["q_value"] < 1e-6 and best["p_value"] < 1e-8
    flagged = sum(sum(doc) for doc in data["flagged"])
    assert result["flagged_tokens"] == flagged > 0
    # exact detector: it fires on every Han token and on nothing else; the flagged tokens not
    # Han are the periods after a Han insertion
    assert best["clean_fires"] == 0
    inserted = sum(any("\u4e00" <= c <= "\u9fff" for c in doc) for doc in data["docs"])
    assert best["flagged_fires"] == flagged - inserted
    assert best["log_odds"] == max(r["log_odds"] for r in result["ranking"])


def test_the_same_ranking_on_local_ray(driven):
    data, _ = driven
    assert data["ray"]["detectors"] == data["local"]["detectors"]


def test_monitor_reports_the_looping_token_and_suppression_ends_it(driven):
    data, _ = driven
    francois = data["monitor"]["subtract"]
    plain, suppressed = francois
    # the demo loops on " François" from these prompts; the detector fires on exactly those
    written = sum(g["continuation"].count(" François") for g in plain["generations"])
    assert plain["fires"]["sae/0:0"] == written >= 3
    assert {e["token"] for e in plain["events"]} == {" François"}
    assert suppressed["suppressed"] and suppressed["fires"]["sae/0:0"] == 0
    assert all(" François" not in g["continuation"] for g in suppressed["generations"])
    clamp_plain, clamp_suppressed = data["monitor"]["clamp"]
    assert clamp_plain == plain
    assert clamp_suppressed["fires"]["sae/0:0"] <= plain["fires"]["sae/0:0"]


def test_cli_corpus_on_the_planted_sae(driven, qwen_demo_cache):
    data, work = driven
    out = cli_on_demo(["anomalies", str(EXAMPLES / "corpus.txt"), "--no-transcoder",
               "--sae", f"{work / 'han'}:0", "--sae-k", "64", "--no-progress"],
              qwen_demo_cache, work)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((work / "anomalies_out" / "anomalies.json").read_text())
    cs = record["detectors"]["code-switching"]
    assert cs["ranking"][0]["feature"] == "sae/0:0" and cs["ranking"][0]["q_value"] < 1e-3
    rep = record["detectors"]["repetition"]
    assert rep["flagged_tokens"] > 0 and rep["flagged_documents"] == 2
    assert (work / "anomalies_out" / "anomalies-code-switching.png").stat().st_size > 1000
    assert "sae/0:0" in out.stdout.split("code-switching:")[1].splitlines()[2]


def test_cli_monitor_on_the_planted_sae(driven, qwen_demo_cache):
    data, work = driven
    args = ["anomalies", "--monitor", "sae/0:0", "--prompts", str(EXAMPLES / "prompts.txt"),
            "--suppress", "subtract", "--suppress-strength", "16", "--max-new-tokens", "12",
            "--no-transcoder", "--sae", f"{work / 'francois'}:0", "--sae-k", "64",
            "--out", "monitor_out"]
    out = cli_on_demo(args, qwen_demo_cache, work)
    assert out.returncode == 0, out.stderr[-3000:]
    record = json.loads((work / "monitor_out" / "monitor.json").read_text())
    assert [r["fires"]["sae/0:0"] for r in record["runs"]] == [
        r["fires"]["sae/0:0"] for r in data["monitor"]["subtract"]]
    assert "suppressed (subtract):" in out.stdout


def test_cli_errors_are_one_line(tmp_path, cli):
    result = cli("anomalies", "--monitor", "sae/0:0", "--out", str(tmp_path / "o"))
    assert result.returncode == 1 and "needs --prompts" in result.stderr
    result = cli("anomalies", str(tmp_path / "x.txt"), "--detectors", "typos")
    assert result.returncode == 1 and "--detectors 'typos'" in result.stderr
