"""``qwen-interp classify``: a planted feature is found, held-out numbers equal hand counts, the
rule file round-trips, bad input is one line, Ray equals in-process.

The model checks run on the built-in demo in ONE fresh interpreter (``DEMO_SCRIPT``; the demo's
HF cache must be configured before huggingface_hub is imported, which pytest's offline hub has
already done in this process): the demo model without its CLT and with a planted SAE at layer 0
(``testing.planted``) whose feature 0 fires exactly on the colour words " red", " blue",
" green". The synthetic task: a document is positive ("colour") when it contains a colour word.
The script reports what the tool computed; the tests compare it with counts made here from the
construction of the documents.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import run_on_demo
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "applications" / "classify"
WORDS = ("the cat sat on a warm mat while rain fell over quiet hills and an old dog slept by "
         "the door because winter had come early to small town").split()
COLOURS = ("red", "blue", "green")
FLIP_POS = (1, 4, 12)  # held-out positives labelled "plain" in the noisy set
FLIP_NEG = (22, 35)  # held-out negatives labelled "colour" in the noisy set


def documents(seed: int, n_each: int) -> list[tuple[str, bool]]:
    """``n_each`` documents with a colour word, then ``n_each`` without."""
    rng = random.Random(seed)
    out = []
    for positive in (True, False):
        for _ in range(n_each):
            words = [rng.choice(WORDS) for _ in range(rng.randint(5, 9))]
            if positive:
                words.insert(rng.randint(1, len(words)), rng.choice(COLOURS))
            out.append((" ".join(words), positive))
    return out


SEEDS = documents(1, 20)
HELD_OUT = documents(2, 20)  # rows 0-19 positive, 20-39 negative
LANG = ["en" if i % 2 == 0 else "xx" for i in range(len(HELD_OUT))]


def records(docs, flips=()):
    return [{"text": text, "label": "colour" if positive != (i in flips) else "plain",
             "lang": LANG[i] if len(docs) == len(LANG) else "en"}
            for i, (text, positive) in enumerate(docs)]


DEMO_SCRIPT = r"""
import json, sys, tempfile
import torch
from qwen_interp.apps import trace
trace.use_demo_hub()
from qwen_interp.apps.applications import classify
from qwen_interp.apps.applications.docpass import document_features
from qwen_interp.apps.applications.labelled import from_records
from qwen_interp.apps.applications.model import ModelConfig
from qwen_interp.apps.session import Session
from qwen_interp.apps.testing import planted

spec = json.loads(sys.argv[1])
session = Session.from_pretrained(trace.DEFAULT_MODEL, None, device="cpu")
tok = session.model.tokenizer
targets = {tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in spec["colours"]}
texts = [r["text"] for r in spec["seeds"] + spec["held_out"]]
others = planted.text_tokens(tok, texts) - targets
sae = planted.plant_sae(session.model, 0, tempfile.mkdtemp(), targets=targets, others=others,
                        first_token=151643, d_sae=64)
session.add_sae(sae.sae)
config = ModelConfig(trace.DEFAULT_MODEL, None, demo=True)
seeds = from_records(spec["seeds"], source="seeds")
clean = from_records(spec["held_out"], source="held_out")
noisy = from_records(spec["noisy"], source="noisy")
out = {}
torch.set_num_threads(1)  # as Ray's CPU actors: the same float rounding
docs = document_features(session, clean.texts, progress=False)
out["planted_fires"] = (docs.pooled[:, docs.index.column("sae/0:0")].toarray()[:, 0] > 0).tolist()
rule = classify.fit(session, seeds, positive="colour", model_config=config, progress=False)
out["rule"] = rule.to_json()
out["clean"] = classify.evaluate(session, rule, clean, model_config=config, progress=False)
out["noisy"] = classify.evaluate(session, rule, noisy, model_config=config, progress=False)
out["predict"] = classify.predict(session, rule, clean.texts[:3] + clean.texts[-2:],
                                  model_config=config, progress=False)
path = rule.save(tempfile.mkdtemp() + "/rule.json")
loaded = classify.load_rule(path)
out["round_trip"] = loaded == rule
out["round_trip_predict"] = classify.predict(session, loaded, clean.texts, model_config=config,
                                             progress=False) == classify.predict(
    session, rule, clean.texts, model_config=config, progress=False)
errors = {}
for name, change in [("model", ("model", "Qwen/Qwen3-8B")),
                     ("transcoder", ("transcoder", "some/clt"))]:
    bad = classify.load_rule(path)
    bad.model[change[0]] = change[1]
    try:
        classify.evaluate(session, bad, clean, model_config=config, progress=False)
    except ValueError as exc:
        errors[name] = str(exc)
bad = classify.load_rule(path)
bad.model["blocks"]["sae/0"]["fingerprint"] = "0" * 16
try:
    classify.predict(session, bad, clean.texts, model_config=config, progress=False)
except ValueError as exc:
    errors["fingerprint"] = str(exc)
out["errors"] = errors
out["curve"] = classify.learning_curve(session, seeds, clean, positive="colour",
                                       model_config=config,
                                       repeats=3, progress=False)
out["ray_rule"] = classify.fit(session, seeds, positive="colour", model_config=config,
                               ray_address="local",
                               workers=2, progress=False).to_json()
out["ray_noisy"] = classify.evaluate(session, rule, noisy, model_config=config,
                                     ray_address="local", workers=2, progress=False)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def demo(qwen_demo_cache):
    spec = {"colours": COLOURS, "seeds": records(SEEDS), "held_out": records(HELD_OUT),
            "noisy": records(HELD_OUT, flips=FLIP_POS + FLIP_NEG)}
    return run_on_demo(DEMO_SCRIPT, json.dumps(spec), cache=qwen_demo_cache)


def hand_metrics(rows, predicted, labelled):
    """Counts by hand over ``rows``: predicted / labelled positive per row."""
    tp = sum(1 for i in rows if predicted[i] and labelled[i])
    fp = sum(1 for i in rows if predicted[i] and not labelled[i])
    fn = sum(1 for i in rows if not predicted[i] and labelled[i])
    tn = sum(1 for i in rows if not predicted[i] and not labelled[i])
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": tp / (tp + fp),
            "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
            "accuracy": (tp + tn) / len(rows)}


# --- the planted feature, on the demo ------------------------------------------------------------
def test_planted_feature_is_the_rule_and_is_perfect(demo):
    # the planted SAE's truth on these documents: feature 0 fires exactly where a colour is
    assert demo["planted_fires"] == [positive for _, positive in HELD_OUT]
    rule = demo["rule"]
    assert rule["features"] == ["sae/0:0"] and rule["min_count"] == 1
    assert rule["positive"] == "colour" and rule["negative"] == "plain"
    assert rule["thresholds"] == [0.0]  # negatives never fire: the pass threshold itself
    assert rule["fit"]["seed"]["f1"] == 1.0
    clean = demo["clean"]["overall"]
    assert clean["f1"] == clean["precision"] == clean["recall"] == clean["accuracy"] == 1.0
    assert (clean["tp"], clean["fp"], clean["fn"], clean["tn"]) == (20, 0, 0, 20)


def test_noisy_labels_give_the_hand_computed_numbers(demo):
    predicted = [positive for _, positive in HELD_OUT]  # the rule is exact (test above)
    flips = set(FLIP_POS + FLIP_NEG)
    labelled = [positive != (i in flips) for i, (_, positive) in enumerate(HELD_OUT)]
    rows = range(len(HELD_OUT))
    expected = hand_metrics(rows, predicted, labelled)
    # 20 predicted positive, 3 of them labelled negative; 2 labelled positive are not predicted
    assert (expected["tp"], expected["fp"], expected["fn"], expected["tn"]) == (17, 3, 2, 18)
    got = demo["noisy"]["overall"]
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=0, rel=1e-12), key
    for lang in ("en", "xx"):
        mine = hand_metrics([i for i in rows if LANG[i] == lang], predicted, labelled)
        theirs = demo["noisy"]["by_lang"][lang]
        for key, value in mine.items():
            assert theirs[key] == pytest.approx(value, abs=0, rel=1e-12), (lang, key)
    assert set(demo["noisy"]["by_lang"]) == {"en", "xx"}
    # en rows are the even ones: flips 4, 12, 22 are even, 1 and 35 odd
    assert (demo["noisy"]["by_lang"]["en"]["fp"], demo["noisy"]["by_lang"]["en"]["fn"]) == (2, 1)


def test_predictions_carry_their_evidence(demo):
    preds = demo["predict"]
    assert [p["positive"] for p in preds] == [True, True, True, False, False]
    assert [p["prediction"] for p in preds] == ["colour"] * 3 + ["plain"] * 2
    for p in preds[:3]:
        assert [f["feature"] for f in p["fired"]] == ["sae/0:0"]
        assert p["fired"][0]["activation"] >= 1.0  # plant_sae: at least 1 on a target
    assert all(p["fired"] == [] for p in preds[3:])


def test_rule_file_round_trip_and_mismatches(demo):
    assert demo["round_trip"] is True and demo["round_trip_predict"] is True
    errors = demo["errors"]
    assert set(errors) == {"model", "transcoder", "fingerprint"}
    assert "fitted on model 'Qwen/Qwen3-8B'" in errors["model"]
    assert "fitted on transcoder 'some/clt'" in errors["transcoder"]
    assert "sae/0 is not the dictionary the rule was fitted with" in errors["fingerprint"]
    assert all("\n" not in e for e in errors.values())


def test_learning_curve_numbers(demo):
    curve = demo["curve"]
    assert curve["full_f1"] == 1.0 and curve["repeats"] == 3
    assert [p["fraction"] for p in curve["points"]] == [0.1, 0.25, 0.5, 1.0]
    # stratified: round(fraction * 20) of each class (1.0: the full set, once)
    assert [p["seeds"] for p in curve["points"]] == [[4] * 3, [10] * 3, [20] * 3, [40]]
    for point in curve["points"]:  # the planted feature separates any sample: always found
        assert point["f1"] == [1.0] * len(point["seeds"]) and point["recovered"] == 1.0
        assert all(run["rule"] == [["sae/0:0", 0.0]] for run in point["runs"])


def test_ray_equals_in_process(demo):
    assert demo["ray_rule"] == demo["rule"]
    assert demo["ray_noisy"] == demo["noisy"]


# --- the method on hand-made matrices (no model) ------------------------------------------------
def index_of(width: int):
    from qwen_interp.apps.applications.model import FeatureIndex
    return FeatureIndex({"sae/0": width})


def brute_force(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Best (F1, precision, threshold) of x > t over t in {0} + observed values."""
    best = (0.0, 0.0, 0.0)
    for t in sorted({0.0, *x[x > 0].tolist()}):
        pred = x > t
        tp = int((pred & y).sum())
        if not pred.any():
            continue
        f1 = 2 * tp / (pred.sum() + y.sum())
        precision = tp / pred.sum()
        if (f1, precision) > best[:2]:
            best = (f1, precision, t)
    return best


def test_single_feature_rules_equal_a_brute_force_search():
    from qwen_interp.apps.applications.classify import single_feature_rules
    rng = np.random.default_rng(0)
    dense = rng.choice([0, 0, 0.5, 1.0, 2.0, 3.0], size=(30, 12)).astype(np.float32)
    y = rng.random(30) < 0.4
    dense[:, 3] = np.where(y, 2.0, 0.0)  # a perfect feature
    got = single_feature_rules(sp.csr_matrix(dense), y)
    for j in range(12):
        f1, precision, t = brute_force(dense[:, j].astype(np.float64), y)
        assert got.f1[j] == pytest.approx(f1) and got.precision[j] == pytest.approx(precision)
        if f1 > 0:
            assert got.threshold[j] == t, j
    assert got.ranking()[0] == 3 and got.f1[3] == 1.0


def test_greedy_or_rule_of_two_half_features():
    """Positives 0-9; feature 2 fires on 0-4, feature 5 on 5-9, feature 0 on everything: the
    OR of features 2 and 5 is perfect, each alone has recall 0.5."""
    from qwen_interp.apps.applications.classify import fit_matrix
    dense = np.zeros((20, 6), np.float32)
    dense[:, 0] = 1.0
    dense[0:5, 2] = 1.5
    dense[5:10, 5] = 0.7
    dense[12, 5] = 0.2  # a weak false positive, below the cut
    y = np.arange(20) < 10
    fitted = fit_matrix(sp.csr_matrix(dense), y, index_of(6))
    # 2 and 5 tie with feature 0 on F1 (2/3) and beat it on precision; 2 comes first by column
    assert fitted["features"] == ["sae/0:2", "sae/0:5"] and fitted["min_count"] == 1
    assert fitted["thresholds"] == [0.0, pytest.approx(0.2)]  # 5's cut leaves out row 12
    assert fitted["steps"][0] == {"added": "sae/0:2", "min_count": 1, "f1": 2 / 3,
                                  "precision": 1.0}
    assert fitted["seed"]["f1"] == 1.0


def test_max_features_caps_the_rule():
    from qwen_interp.apps.applications.classify import fit_matrix
    dense = np.zeros((20, 6), np.float32)
    for j in range(5):
        dense[2 * j:2 * j + 2, j] = 1.0
    y = np.arange(20) < 10
    fitted = fit_matrix(sp.csr_matrix(dense), y, index_of(6), max_features=3)
    assert len(fitted["features"]) == 3 and fitted["min_count"] == 1
    assert fitted["seed"]["tp"] == 6 and fitted["seed"]["fp"] == 0


def test_choose_positive():
    from qwen_interp.apps.applications.classify import choose_positive
    assert choose_positive(["0", "1", "1"], None) == ("1", "0")
    assert choose_positive(["No", "Yes"], None) == ("Yes", "No")
    assert choose_positive(["a", "b", "c"], "b") == ("b", "not b")
    with pytest.raises(ValueError, match="which label is positive"):
        choose_positive(["spam", "ham"], None)
    with pytest.raises(ValueError, match="unknown label 'x'"):
        choose_positive(["spam", "ham"], "x")
    with pytest.raises(ValueError, match="one class only"):
        choose_positive(["spam", "spam"], "spam")


# --- labelled files and the command line's one-line errors ---------------------------------------
def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_labelled_formats_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qwen_interp.apps.applications.labelled import read_labelled
    rows = [{"text": "a b", "label": "x", "lang": "en"}, {"text": "c, \"d\"", "label": 1}]
    jsonl = write(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    csv = write(tmp_path / "d.csv", 'text,label,lang\na b,x,en\n"c, ""d""",1,\n')
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["a b", 'c, "d"'], "label": ["x", "1"],
                             "lang": ["en", None]}), parquet)
    for path in (jsonl, csv, parquet):
        data = read_labelled(path)
        assert data.texts == ["a b", 'c, "d"'] and data.labels == ["x", "1"]
        assert data.langs == ["en", "und"], path


@pytest.mark.parametrize("name, text, message", [
    ("e.jsonl", "", "e.jsonl: no rows"),
    ("b.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"\n', "b.jsonl:2: not a JSON object"),
    ("m.jsonl", '{"text": "a", "label": "x"}\n\n{"text": "b"}\n', "m.jsonl:3: no 'label'"),
    ("t.jsonl", '{"text": "  ", "label": "x"}\n', "t.jsonl:1: empty 'text'"),
    ("c.csv", "label\nx\n", "c.csv:1: no 'text' column"),
    ("w.csv", "text,label\na,x,extra\n", "w.csv:2: more cells than columns"),
    ("n.xml", "<x/>", "unsupported file type '.xml'"),
])
def test_labelled_errors_name_file_and_line(tmp_path, name, text, message):
    from qwen_interp.apps.applications.labelled import read_labelled
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        read_labelled(write(tmp_path / name, text))


@pytest.mark.parametrize("case, message", [
    ("unknown", "unknown label 'toxic' for --positive"),
    ("empty", "no rows"),
    ("one_class", "one class only"),
    ("no_positive", "which label is positive? give --positive"),
    ("bad_line", ":2: not a JSON object"),
])
def test_fit_bad_input_is_one_line(cli, tmp_path, case, message):
    train = tmp_path / "train.jsonl"
    rows = {"unknown": ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}'],
            "empty": [], "one_class": ['{"text": "a", "label": "x"}'] * 2,
            "no_positive": ['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}'],
            "bad_line": ['{"text": "a", "label": "x"}', "{oops"]}[case]
    write(train, "".join(r + "\n" for r in rows))
    extra = ["--positive", "toxic"] if case == "unknown" else []
    out = cli("classify", "fit", "--train", train, "--out", tmp_path / "r.json", *extra)
    assert out.returncode == 1
    assert out.stderr.startswith("qwen-interp classify: error:") and message in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "r.json").exists()


def test_rule_for_another_model_is_refused_before_loading(cli, tmp_path):
    rule = json.loads(json.dumps({
        "features": ["clt/0:1"], "thresholds": [0.5], "min_count": 1, "positive": "x",
        "negative": "y", "labels": ["x", "y"], "format": 1,
        "model": {"model": "Qwen/Qwen3-8B", "transcoder": "some/clt", "dtype": "float32",
                  "blocks": {"clt/0": {"width": 256, "fingerprint": "0" * 16}}}}))
    path = write(tmp_path / "rule.json", json.dumps(rule))
    test = write(tmp_path / "t.jsonl", '{"text": "a", "label": "x"}\n')
    out = cli("classify", "eval", "--rule", path, "--test", test)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "fitted on model 'Qwen/Qwen3-8B', this run has 'Qwen/Qwen3-1.7B-Base'" in out.stderr
    rule["model"]["model"], rule["model"]["transcoder"] = (
        "Qwen/Qwen3-1.7B-Base", "bluelightai/clt-qwen3-1.7b-base-20k")
    write(path, json.dumps(rule))
    unknown = write(tmp_path / "u.jsonl", '{"text": "a", "label": "x"}\n'
                                          '{"text": "b", "label": "z"}\n')
    out = cli("classify", "eval", "--rule", path, "--test", unknown)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert "u.jsonl:2: unknown label 'z'" in out.stderr
    out = cli("classify", "eval", "--rule", write(tmp_path / "bad.json", "{}"), "--test", test)
    assert out.returncode == 1 and "not a rule file" in out.stderr


# --- the README's commands, as typed, on the demo -------------------------------------------------
def test_readme_commands_on_the_demo(qwen_demo_cache, tmp_path):
    """README: fit on the example seeds, eval on the held-out file (per language), predict."""
    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "qwen_interp.apps.cli", *args],
                              capture_output=True, text=True, timeout=900, cwd=tmp_path,
                              env={**os.environ, "QWEN_INTERP_CACHE": str(qwen_demo_cache)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout
    fit = run("classify", "fit", "--train", EXAMPLES / "seeds.jsonl", "--positive", "leader",
              "--out", "rule.json")
    rule = json.loads((tmp_path / "rule.json").read_text())
    assert rule["positive"] == "leader" and 1 <= len(rule["features"]) <= 5
    assert rule["fit"]["seed"]["f1"] == 1.0 and "rule: 'leader' if" in fit
    out = run("classify", "eval", "--rule", "rule.json", "--test",
              EXAMPLES / "heldout.jsonl", "--out", "eval.json")
    report = json.loads((tmp_path / "eval.json").read_text())
    assert set(report["by_lang"]) == {"en", "fr", "zh"}
    assert report["by_lang"]["en"]["n"] == 40 and report["by_lang"]["en"]["f1"] >= 0.9
    assert sum(m["n"] for m in report["by_lang"].values()) == report["overall"]["n"] == 60
    assert "lang=fr" in out
