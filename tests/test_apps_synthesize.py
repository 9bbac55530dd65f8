"""``qwen-interp synthesize`` on the built-in demo with a planted SAE at layer 0
(``testing.planted``, ``promote=True``): a detector of " Ottawa" whose decoder raises that
token's logit. The example dataset never mentions Ottawa, so the feature never fires on it;
steering toward it makes the model write " Ottawa" at high strengths only, and exactly the
samples in which the unsteered model's feature fires are kept - checked again independently
with ``Session.run``.

The Python API runs in one fresh interpreter (``DRIVER``, HF_HOME = the demo's cache); the
command line runs on the same planted SAE (tests/test_readme_commands.py runs the README's
commands).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import cli_on_demo, run_on_demo

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "applications" / "synthesize"

DRIVER = r'''
import json, sys
from dataclasses import asdict
from pathlib import Path
import torch
from qwen_interp.apps import trace
from qwen_interp.apps.applications import synthesize as S
from qwen_interp.apps.applications.model import ModelConfig, load_session
from qwen_interp.apps.demo import facts as F
from qwen_interp.apps.testing.planted import plant_sae, text_tokens

out, examples = Path(sys.argv[1]), Path(sys.argv[2])
lines = lambda name: [x for x in (examples / name).read_text().splitlines() if x.strip()]
dataset, prompts = lines("dataset.txt"), lines("prompts.txt")
config = ModelConfig(trace.DEFAULT_MODEL, trace.DEFAULT_TRANSCODER, demo=True)
session = load_session(config, device="cpu", saes=[])
tok = session.model.tokenizer
ottawa = text_tokens(tok, [" Ottawa"])
others = text_tokens(tok, [f.prompt + f.answer for f in F.corpus()] + dataset + prompts)
with torch.no_grad():  # planted.py's promote direction reads W_U, which requires grad
    planted = plant_sae(session.model, 0, out / "ottawa", targets=ottawa, others=others,
                        first_token=F.BOS_ID, promote=True)
session.add_sae(planted.sae)
local = S.inactive_on_dataset(session, dataset, model_config=config, progress=False)
ray = S.inactive_on_dataset(session, dataset, model_config=config, ray_address="local",
                            workers=2, progress=False)
result = S.synthesize(session, ["sae/0:0"], prompts, strengths=(8, 32), max_new_tokens=8,
                      progress=False)
independent = []
for a in result.attempts:  # the unsteered model again, through Session.run
    acts = session.run(a.text, logits=False, clt=False).sae_features[0][0, 1:, 0]
    independent.append([float(x) for x in acts])
print(json.dumps({"local": local, "ray": ray, "ottawa": sorted(ottawa),
                  "attempts": [asdict(a) for a in result.attempts],
                  "report": result.report(), "independent": independent}))
'''


@pytest.fixture(scope="module")
def driven(qwen_demo_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("synthesize")
    return run_on_demo(DRIVER, str(work), str(EXAMPLES), cache=qwen_demo_cache), work


def test_the_planted_feature_is_inactive_on_the_dataset_in_process_and_on_ray(driven):
    data, _ = driven
    assert "sae/0:0" in data["local"]
    assert data["ray"] == data["local"]


def test_kept_samples_fire_and_dropped_ones_do_not(driven):
    data, _ = driven
    attempts, independent = data["attempts"], data["independent"]
    assert len(attempts) == 6  # 3 prompts x 2 strengths
    kept = [a for a in attempts if a["kept"]]
    dropped = [a for a in attempts if not a["kept"]]
    assert kept and dropped
    assert all(a["strength"] == 32 for a in kept)  # strength 8 does not make it write Ottawa
    for a, acts in zip(attempts, independent, strict=True):
        start = a["evidence"].get("prompt_tokens", 0)
        fires_in_continuation = [p for p, v in enumerate(acts) if v > 0 and p >= start]
        assert a["kept"] == bool(fires_in_continuation) == (" Ottawa" in a["continuation"])
        if a["kept"]:
            ev = a["evidence"]
            assert ev["token"] == " Ottawa" and acts[ev["position"]] > 0
            assert [f["position"] for f in ev["firing"]] == fires_in_continuation
            assert abs(ev["max_activation"] - max(acts[p] for p in fires_in_continuation)) < 1e-4
    report = data["report"]["per_feature"]["sae/0:0"]
    assert report["attempts"] == 6 and report["kept"] == len(kept)
    assert report["by_strength"]["8.0"]["kept"] == 0


def test_cli_on_the_planted_sae(driven, qwen_demo_cache):
    data, work = driven
    out = cli_on_demo(["synthesize", str(EXAMPLES / "dataset.txt"), "--prompts",
               str(EXAMPLES / "prompts.txt"), "--top", "1", "--strengths", "8,32",
               "--max-new-tokens", "8", "--no-transcoder", "--sae", f"{work / 'ottawa'}:0",
               "--sae-k", "64", "--no-progress"], qwen_demo_cache, work)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((work / "synthesize_out" / "report.json").read_text())
    assert report["targets"] == ["sae/0:0"] and report["targets_inactive"] == {"sae/0:0": True}
    samples = [json.loads(x) for x in
               (work / "synthesize_out" / "samples.jsonl").read_text().splitlines()]
    assert [s["text"] for s in samples] == [a["text"] for a in data["attempts"] if a["kept"]]
    assert "sae/0:0: kept" in out.stdout


def test_inactive_features_from_a_statistics_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qwen_interp.apps.applications.model import FeatureIndex
    from qwen_interp.apps.applications.synthesize import inactive_columns, inactive_from_stats
    (tmp_path / "tables").mkdir()
    pq.write_table(pa.table({"kind": ["sae"] * 4, "layer": [0, 0, 0, 0],
                             "feature": [0, 1, 2, 3], "count": [5, 0, 0, 2]}),
                   tmp_path / "tables" / "sae.parquet")
    pq.write_table(pa.table({"kind": ["clt"] * 2, "layer": [1, 1], "feature": [0, 1],
                             "count": [0, 3]}), tmp_path / "tables" / "clt.parquet")
    index = FeatureIndex({"clt/1": 2, "sae/0": 4})
    assert inactive_from_stats(tmp_path, index) == ["clt/1:0", "sae/0:1", "sae/0:2"]
    with pytest.raises(ValueError, match="no tables"):
        inactive_from_stats(tmp_path / "nowhere", index)
    import numpy as np
    import scipy.sparse as sp
    pooled = sp.csr_matrix(np.array([[0, 1.0, 0, 0], [0, 0, 0, 2.0]]))
    assert inactive_columns(pooled).tolist() == [0, 2]


def test_cli_errors_are_one_line(tmp_path, cli):
    result = cli("synthesize", "--prompts", str(EXAMPLES / "prompts.txt"), "--out",
                 str(tmp_path / "o"))
    assert result.returncode == 1 and "give a DATASET, --stats DIR or --features" in result.stderr
    result = cli("synthesize", "--features", "sae/0:0", "--prompts", str(EXAMPLES / "prompts.txt"),
                 "--strengths", "big")
    assert result.returncode == 1 and "--strengths 'big'" in result.stderr
