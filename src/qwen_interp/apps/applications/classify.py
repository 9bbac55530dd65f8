"""Training-free classifiers from a few labelled seed examples: a readable rule over a few
features, no classifier head, no gradient descent (Qwen-Scope's first application;
docs/applications.md).

Documents are read by the shared document pass (``docpass``, ``mode="pooled"``): per document,
each feature's maximum activation over its tokens. The task is binary: one label is positive,
every other label negative (one-vs-rest).

**Selection criterion** (:func:`single_feature_rules`): for each feature, the best single-feature
threshold rule ``x > t`` on the seed set, thresholds searched over the feature's observed seed
activations and the pass threshold (0: "fires at all"); the rule's F1 on the seed set is the
feature's score. For a cut that predicts exactly the documents whose activation is at least
``v``, ``t`` is the next lower observed value (or the pass threshold), so the rule reproduces
the seed predictions exactly. Features are ranked by F1, then precision, then column order.

**Rule** (:func:`fit_matrix`): ``positive if at least m of [f1 > t1, f2 > t2, ...]`` (OR when
``m = 1``, AND when ``m`` = the number of features). It starts with the best-ranked feature
(``m = 1``); each step tries every one of the ``candidates`` best-ranked features not yet in the
rule (each at its own best threshold) with every ``m`` from 1 to the new size, and adds the
combination with the highest seed F1 (ties: precision, then rank, then smaller ``m``) if that F1
is strictly higher than the rule's; at most ``max_features`` features.

Metrics: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2TP / (2TP + FP + FN),
accuracy = (TP + TN) / n; a ratio with a zero denominator is reported as ``None`` (null).

The rule file (:class:`Rule`, JSON) names the model, the transcoder and, per dictionary block
the rule reads, its width and a fingerprint of its encoder bias (sha256 of ``b_enc`` cast to
bfloat16, so a float32 and a bfloat16 load of the same weights agree); a rule applied to another
model or dictionary is refused in one line (:func:`check_rule`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from .model import FeatureIndex, ModelConfig

if TYPE_CHECKING:  # torch loads with the document pass, not with the command line's parser
    from .docpass import PassConfig
    from .labelled import LabelledData

FORMAT_VERSION = 1
DEFAULT_MAX_FEATURES = 5
DEFAULT_CANDIDATES = 256
DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
DEFAULT_REPEATS = 5
# Label pairs whose positive member is unambiguous (compared in lower case).
CONVENTIONAL_POSITIVE = {("0", "1"): "1", ("false", "true"): "true", ("no", "yes"): "yes",
                         ("negative", "positive"): "positive", ("neg", "pos"): "pos"}


# --- metrics -------------------------------------------------------------------------------
def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def metrics(predicted: np.ndarray, truth: np.ndarray) -> dict:
    """Counts and ratios of boolean predictions against boolean truth."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    tp = int((predicted & truth).sum())
    fp = int((predicted & ~truth).sum())
    fn = int((~predicted & truth).sum())
    tn = int((~predicted & ~truth).sum())
    return {"n": tp + fp + fn + tn, "positives": tp + fn, "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "accuracy": _ratio(tp + tn, tp + fp + fn + tn)}


# --- the rule --------------------------------------------------------------------------------
@dataclass
class Rule:
    features: list[str]
    thresholds: list[float]
    min_count: int  # m: positive when at least m features fire
    positive: str
    negative: str  # what a negative prediction is called: the other label, or "not POSITIVE"
    labels: list[str]  # every label of the seed data
    model: dict  # model, transcoder, dtype, blocks: {block: {width, fingerprint}}
    pass_config: dict = field(default_factory=dict)  # the document pass (max_tokens)
    fit: dict = field(default_factory=dict)  # seed metrics, candidates, chosen features' scores
    format: int = FORMAT_VERSION

    def describe(self) -> str:
        terms = ", ".join(f"{f} > {t:.4g}" for f, t in zip(self.features, self.thresholds))
        how = "any" if self.min_count == 1 else f"at least {self.min_count}"
        return f"{self.positive!r} if {how} of [{terms}], else {self.negative!r}"

    def to_json(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from qwen_interp.atomic import replace_file
        path = Path(path)
        text = json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n"
        replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return path


def load_rule(path: str | Path) -> Rule:
    """A rule file, checked for shape (not yet against a model: :func:`check_rule`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such rule file") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: not a rule file (not JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        found = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path}: not a rule file of format {FORMAT_VERSION} (format: {found})")
    try:
        rule = Rule(**data)
        ok = (len(rule.features) == len(rule.thresholds) >= 1
              and 1 <= rule.min_count <= len(rule.features)
              and all(isinstance(t, (int, float)) for t in rule.thresholds)
              and isinstance(rule.model.get("blocks"), dict))
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a rule file ({exc})") from None
    if not ok:
        raise ValueError(f"{path}: not a rule file (features, thresholds and min_count disagree)")
    return rule


def fingerprint(session, block: str) -> str:
    """sha256 (16 hex digits) of the block's encoder bias as bfloat16."""
    import torch
    kind, _, layer = block.partition("/")
    if kind == "clt":
        bias = session.model.transcoders.b_enc[int(layer)]
    else:
        bias = session.saes[int(layer)].b_enc
    data = bias.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def identity(session, model_config: ModelConfig | None = None,
             blocks: list[str] | None = None) -> dict:
    """What a rule was fitted on: model, transcoder, dtype and the blocks' widths and
    fingerprints (all blocks, or ``blocks``)."""
    from .model import feature_index
    index = feature_index(session)
    cfg = session.model.cfg
    names = list(index.widths) if blocks is None else blocks
    return {"model": model_config.model if model_config else cfg.model_name,
            "transcoder": (model_config.transcoder if model_config
                           else ("clt" if session.has_clt else None)),
            "dtype": str(cfg.dtype).removeprefix("torch."),
            "blocks": {b: {"width": index.widths[b], "fingerprint": fingerprint(session, b)}
                       for b in names if b in index.widths}}


def rule_blocks(rule: Rule) -> list[str]:
    return sorted({f.partition(":")[0] for f in rule.features})


HINT = "pass the --model/--transcoder/--sae it was fitted with"


def check_names(rule: Rule, here: dict | ModelConfig, source: str = "rule") -> None:
    """One-line ValueError if ``rule`` names another model or transcoder."""
    for key in ("model", "transcoder"):
        have = here[key] if isinstance(here, dict) else getattr(here, key)
        if rule.model.get(key) != have:
            raise ValueError(f"{source}: fitted on {key} {rule.model.get(key)!r}, this run has "
                             f"{have!r} ({HINT})")


def check_rule(rule: Rule, session, model_config: ModelConfig | None = None,
               source: str = "rule") -> None:
    """One-line ValueError if ``rule`` was fitted on another model or other dictionaries than
    the blocks of ``session`` that it reads."""
    here = identity(session, model_config)
    hint = HINT
    check_names(rule, here, source)
    for block in rule_blocks(rule):
        want = rule.model["blocks"].get(block)
        have = here["blocks"].get(block)
        if want is None:
            raise ValueError(f"{source}: feature block {block} is not described in the file")
        if have is None:
            raise ValueError(f"{source}: reads {block}, which this run does not load (it has "
                             f"{', '.join(here['blocks'])}; {hint})")
        if want["width"] != have["width"]:
            raise ValueError(f"{source}: {block} had {want['width']} features when fitted, this "
                             f"run's has {have['width']} ({hint})")
        if want["fingerprint"] != have["fingerprint"]:
            raise ValueError(f"{source}: {block} is not the dictionary the rule was fitted with "
                             f"(fingerprint {have['fingerprint']}, fitted "
                             f"{want['fingerprint']}; {hint})")


# --- labels ----------------------------------------------------------------------------------
def choose_positive(labels, positive: str | None, source: str = "data") -> tuple[str, str]:
    """(positive, negative name): ``positive`` must be a label of the data; without it the data
    must have two labels forming a conventional pair (0/1, false/true, no/yes,
    negative/positive, neg/pos)."""
    present = sorted(set(labels))
    if len(present) < 2:
        raise ValueError(f"{source}: one class only ({present[0]!r}); a classifier needs "
                         "examples of both")
    if positive is None:
        key = tuple(sorted(label.lower() for label in present))
        if key not in CONVENTIONAL_POSITIVE:
            raise ValueError(f"{source}: which label is positive? give --positive (one of "
                             f"{', '.join(repr(p) for p in present)})")
        positive = next(p for p in present if p.lower() == CONVENTIONAL_POSITIVE[key])
    if positive not in present:
        raise ValueError(f"{source}: unknown label {positive!r} for --positive (labels: "
                         f"{', '.join(repr(p) for p in present)})")
    others = [p for p in present if p != positive]
    return positive, others[0] if len(others) == 1 else f"not {positive}"


# --- selection and rule building (on a pooled matrix) -----------------------------------------
@dataclass
class SingleRules:
    """Per feature (column): the best single-feature rule ``x > threshold`` on the seeds."""

    f1: np.ndarray
    precision: np.ndarray
    threshold: np.ndarray
    tp: np.ndarray
    fp: np.ndarray

    def ranking(self) -> np.ndarray:
        """Columns with F1 > 0, best first (F1, then precision, then column)."""
        columns = np.flatnonzero(self.f1 > 0)
        order = np.lexsort((columns, -self.precision[columns], -self.f1[columns]))
        return columns[order]


def single_feature_rules(pooled: sp.spmatrix, y: np.ndarray, floor: float = 0.0) -> SingleRules:
    """Every feature's best threshold rule (see the module's docstring), vectorized over the
    stored (above ``floor``) activations."""
    y = np.asarray(y, bool)
    n_features = pooled.shape[1]
    csc = sp.csc_matrix(pooled)
    csc.sum_duplicates()
    columns = np.repeat(np.arange(n_features), np.diff(csc.indptr))
    values, rows = csc.data.astype(np.float64), csc.indices
    keep = values > floor
    columns, values, rows = columns[keep], values[keep], rows[keep]
    order = np.lexsort((-values, columns))  # by column, largest activation first
    columns, values, rows = columns[order], values[order], rows[order]
    hits = y[rows].astype(np.int64)
    out = SingleRules(np.zeros(n_features), np.zeros(n_features), np.full(n_features, floor),
                      np.zeros(n_features, np.int64), np.zeros(n_features, np.int64))
    if not len(values):
        return out
    start = np.r_[0, np.flatnonzero(np.diff(columns)) + 1]  # first entry of each column
    group = np.repeat(np.arange(len(start)), np.diff(np.r_[start, len(values)]))
    cum_hits = np.cumsum(hits)
    tp = cum_hits - (cum_hits[start] - hits[start])[group]
    predicted = np.arange(len(values)) - start[group] + 1
    last = np.r_[columns[1:] != columns[:-1], True]
    next_value = np.where(last, floor, np.r_[values[1:], floor])
    cut = last | (next_value < values)  # a cut only between distinct values
    positives = int(y.sum())
    f1 = np.where(cut, 2 * tp / (predicted + positives), -1.0)
    precision = tp / predicted
    best = np.lexsort((-precision, -f1, columns))  # per column: best F1, then precision
    first = best[np.r_[0, np.flatnonzero(np.diff(columns[best])) + 1]]
    cols = columns[first]
    out.f1[cols] = np.maximum(f1[first], 0)
    out.precision[cols] = precision[first]
    out.threshold[cols] = next_value[first]
    out.tp[cols] = tp[first]
    out.fp[cols] = predicted[first] - tp[first]
    return out


def fire_matrix(pooled: sp.spmatrix, columns, thresholds) -> np.ndarray:
    """(documents, len(columns)) booleans: activation > threshold."""
    dense = sp.csc_matrix(pooled)[:, list(columns)].toarray()
    return dense > np.asarray(thresholds, dtype=np.float64)[None, :]


def fit_matrix(pooled: sp.spmatrix, y: np.ndarray, index: FeatureIndex, *,
               max_features: int = DEFAULT_MAX_FEATURES, candidates: int = DEFAULT_CANDIDATES,
               floor: float = 0.0) -> dict:
    """The rule on a pooled seed matrix (module docstring): ``{"features", "thresholds",
    "min_count", "seed": metrics, "steps": [...], "ranking": [...]}``."""
    if max_features < 1 or candidates < 1:
        raise ValueError("max_features and candidates must be at least 1")
    y = np.asarray(y, bool)
    singles = single_feature_rules(pooled, y, floor)
    ranked = singles.ranking()[:candidates]
    if not len(ranked):
        raise ValueError("no feature fires on any positive seed example: nothing to build a "
                         "rule from")
    fires = fire_matrix(pooled, ranked, singles.threshold[ranked])  # (n, candidates)
    positives = int(y.sum())
    chosen, m = [0], 1  # positions in `ranked`
    count = fires[:, 0].astype(np.int64)
    best = metrics(count >= 1, y)
    steps = [{"added": index.name(ranked[0]), "min_count": 1, "f1": best["f1"],
              "precision": best["precision"]}]
    while len(chosen) < max_features:
        pool = np.array([i for i in range(len(ranked)) if i not in chosen], dtype=np.int64)
        if not len(pool):
            break
        size = len(chosen) + 1
        totals = count[:, None] + fires[:, pool]  # (n, pool)
        trials = []  # (f1, precision, rank, m)
        for k in range(1, size + 1):
            predicted = totals >= k
            tp = (predicted & y[:, None]).sum(axis=0)
            n_pred = predicted.sum(axis=0)
            f1 = 2 * tp / (n_pred + positives)
            precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
            trials += [(f1[j], precision[j], int(pool[j]), k) for j in range(len(pool))]
        f1_best, precision_best, rank, k = min(trials, key=lambda t: (-t[0], -t[1], t[2], t[3]))
        if not f1_best > (best["f1"] or 0.0):
            break
        chosen.append(rank)
        m = k
        count = count + fires[:, rank]
        best = metrics(count >= m, y)
        steps.append({"added": index.name(ranked[rank]), "min_count": m, "f1": best["f1"],
                      "precision": best["precision"]})
    columns = ranked[chosen]
    return {"features": index.names(columns),
            "thresholds": [float(singles.threshold[c]) for c in columns],
            "min_count": m, "seed": best, "steps": steps,
            "single": [{"feature": index.name(c), "threshold": float(singles.threshold[c]),
                        "f1": float(singles.f1[c]), "precision": float(singles.precision[c]),
                        "tp": int(singles.tp[c]), "fp": int(singles.fp[c])}
                       for c in ranked[:10]]}


def apply_rule(rule: Rule, pooled: sp.spmatrix, index: FeatureIndex
               ) -> tuple[np.ndarray, np.ndarray]:
    """(positive?, fires (documents, rule features)) of a pooled matrix."""
    columns = [index.column(f) for f in rule.features]
    fires = fire_matrix(pooled, columns, rule.thresholds)
    return fires.sum(axis=1) >= rule.min_count, fires


def evaluate_matrix(rule: Rule, pooled: sp.spmatrix, index: FeatureIndex, labels,
                    langs) -> dict:
    """Overall and per-language metrics of ``rule`` on labelled documents (pooled)."""
    predicted, _ = apply_rule(rule, pooled, index)
    truth = np.array([label == rule.positive for label in labels])
    langs = np.asarray(langs, dtype=object)
    return {"overall": metrics(predicted, truth),
            "by_lang": {lang: metrics(predicted[langs == lang], truth[langs == lang])
                        for lang in sorted(set(langs.tolist()))}}


# --- the Python API on a session ------------------------------------------------------------
def pooled_features(session, texts, *, pass_config: PassConfig | None = None,
                    model_config: ModelConfig | None = None, ray_address: str | None = None,
                    workers: int | None = None, progress: bool = True, desc: str = "documents"):
    from .docpass import document_features
    return document_features(session, texts, config=pass_config, mode="pooled",
                             model_config=model_config, ray_address=ray_address,
                             workers=workers, progress=progress, desc=desc)


def check_labels(rule: Rule, data: LabelledData) -> None:
    for i, label in enumerate(data.labels):
        if label is None:
            raise ValueError(f"{data.where(i)}: no label (eval needs labelled data)")
        if label not in rule.labels:
            raise ValueError(f"{data.where(i)}: unknown label {label!r} (the rule knows "
                             f"{', '.join(repr(x) for x in rule.labels)})")


def rule_from_fit(fitted: dict, *, positive: str, negative: str, labels, model: dict,
                  pass_config: PassConfig, extra: dict | None = None) -> Rule:
    return Rule(features=fitted["features"], thresholds=fitted["thresholds"],
                min_count=fitted["min_count"], positive=positive, negative=negative,
                labels=sorted(set(labels)), model=model,
                pass_config={"max_tokens": pass_config.max_tokens},
                fit={"seed": fitted["seed"], "steps": fitted["steps"],
                     "single": fitted["single"], **(extra or {})})


def fit(session, data: LabelledData, *, positive: str | None = None,
        max_features: int = DEFAULT_MAX_FEATURES, candidates: int = DEFAULT_CANDIDATES,
        pass_config: PassConfig | None = None, model_config: ModelConfig | None = None,
        ray_address: str | None = None, workers: int | None = None,
        progress: bool = True) -> Rule:
    """Fit a rule on labelled seed documents (module docstring)."""
    from .docpass import PassConfig
    pass_config = pass_config or PassConfig()
    positive, negative = choose_positive(data.labels, positive, data.source or "seed data")
    docs = pooled_features(session, data.texts, pass_config=pass_config,
                           model_config=model_config, ray_address=ray_address,
                           workers=workers, progress=progress, desc="seed documents")
    y = np.array([label == positive for label in data.labels])
    fitted = fit_matrix(docs.pooled, y, docs.index, max_features=max_features,
                        candidates=candidates, floor=pass_config.threshold)
    model = identity(session, model_config,
                     blocks=sorted({f.partition(":")[0] for f in fitted["features"]}))
    return rule_from_fit(fitted, positive=positive, negative=negative, labels=data.labels,
                         model=model, pass_config=pass_config,
                         extra={"documents": len(data), "source": data.source,
                                "max_features": max_features, "candidates": candidates})


def _pass_for(rule: Rule, pass_config: PassConfig | None) -> PassConfig:
    from .docpass import PassConfig
    return pass_config or PassConfig(max_tokens=rule.pass_config.get("max_tokens", 256))


def predict(session, rule: Rule, texts, *, pass_config: PassConfig | None = None,
            model_config: ModelConfig | None = None, ray_address: str | None = None,
            workers: int | None = None, progress: bool = True) -> list[dict]:
    """One record per text: the prediction and its evidence (the rule's features that fired,
    with their pooled activations)."""
    check_rule(rule, session, model_config)
    docs = pooled_features(session, list(texts), pass_config=_pass_for(rule, pass_config),
                           model_config=model_config, ray_address=ray_address,
                           workers=workers, progress=progress)
    predicted, fires = apply_rule(rule, docs.pooled, docs.index)
    columns = [docs.index.column(f) for f in rule.features]
    values = sp.csc_matrix(docs.pooled)[:, columns].toarray()
    out = []
    for i in range(docs.n_documents):
        fired = [{"feature": f, "activation": float(values[i, j]), "threshold": t}
                 for j, (f, t) in enumerate(zip(rule.features, rule.thresholds)) if fires[i, j]]
        out.append({"index": i, "prediction": rule.positive if predicted[i] else rule.negative,
                    "positive": bool(predicted[i]), "fired": fired,
                    "fired_count": len(fired), "min_count": rule.min_count})
    return out


def evaluate(session, rule: Rule, data: LabelledData, *, pass_config: PassConfig | None = None,
             model_config: ModelConfig | None = None, ray_address: str | None = None,
             workers: int | None = None, progress: bool = True) -> dict:
    """Precision, recall, F1 and accuracy of ``rule`` on held-out ``data``, overall and per
    language."""
    check_rule(rule, session, model_config)
    check_labels(rule, data)
    docs = pooled_features(session, data.texts, pass_config=_pass_for(rule, pass_config),
                           model_config=model_config, ray_address=ray_address,
                           workers=workers, progress=progress, desc="held-out documents")
    report = evaluate_matrix(rule, docs.pooled, docs.index, data.labels, data.langs)
    return {"rule": rule.describe(), "source": data.source, "positive": rule.positive,
            **report}


# --- learning curve ----------------------------------------------------------------------------
def stratified_sample(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices: per class, ``max(1, round(fraction * n_class))`` rows drawn without
    replacement, sorted."""
    rows = []
    for value in (True, False):
        members = np.flatnonzero(y == value)
        size = min(len(members), max(1, int(round(fraction * len(members)))))
        rows.append(rng.choice(members, size=size, replace=False))
    return np.sort(np.concatenate(rows))


def curve_matrix(train: sp.spmatrix, y_train: np.ndarray, test: sp.spmatrix,
                 y_test: np.ndarray, index: FeatureIndex, *,
                 fractions=DEFAULT_FRACTIONS, repeats: int = DEFAULT_REPEATS, seed: int = 0,
                 max_features: int = DEFAULT_MAX_FEATURES,
                 candidates: int = DEFAULT_CANDIDATES, floor: float = 0.0) -> dict:
    """Held-out metrics of rules fitted on stratified subsamples of the seeds: for each fraction
    and repeat r, the sample drawn with ``numpy.random.default_rng([seed, r])`` (fraction 1.0 is
    the full seed set, run once). ``recovered``: mean held-out F1 / the full-data F1."""
    fractions = sorted({float(f) for f in fractions})
    if not fractions or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"fractions must be in (0, 1], got {fractions}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    y_train, y_test = np.asarray(y_train, bool), np.asarray(y_test, bool)
    train = sp.csr_matrix(train)
    rule = Rule([], [], 1, "", "", [], {})

    def held_out(rows: np.ndarray) -> dict:
        fitted = fit_matrix(train[rows], y_train[rows], index, max_features=max_features,
                            candidates=candidates, floor=floor)
        rule.features, rule.thresholds = fitted["features"], fitted["thresholds"]
        rule.min_count = fitted["min_count"]
        predicted, _ = apply_rule(rule, test, index)
        return {**metrics(predicted, y_test), "seeds": len(rows),
                "rule": list(zip(fitted["features"], fitted["thresholds"])),
                "min_count": fitted["min_count"]}

    full = held_out(np.arange(len(y_train)))
    points = []
    for fraction in fractions:
        runs = [full] if fraction == 1.0 else [
            held_out(stratified_sample(y_train, fraction, np.random.default_rng([seed, r])))
            for r in range(repeats)]
        f1 = np.array([run["f1"] or 0.0 for run in runs])
        points.append({"fraction": fraction, "seeds": [run["seeds"] for run in runs],
                       "f1": f1.tolist(), "f1_mean": float(f1.mean()),
                       "f1_min": float(f1.min()), "f1_max": float(f1.max()),
                       "precision_mean": float(np.mean([r["precision"] or 0.0 for r in runs])),
                       "recall_mean": float(np.mean([r["recall"] or 0.0 for r in runs])),
                       "recovered": (float(f1.mean()) / full["f1"]) if full["f1"] else None,
                       "runs": runs})
    return {"full_f1": full["f1"], "fractions": fractions, "repeats": repeats, "seed": seed,
            "points": points}


def learning_curve(session, train: LabelledData, test: LabelledData, *,
                   positive: str | None = None, fractions=DEFAULT_FRACTIONS,
                   repeats: int = DEFAULT_REPEATS, seed: int = 0,
                   max_features: int = DEFAULT_MAX_FEATURES,
                   candidates: int = DEFAULT_CANDIDATES, pass_config: PassConfig | None = None,
                   model_config: ModelConfig | None = None, ray_address: str | None = None,
                   workers: int | None = None, progress: bool = True) -> dict:
    """:func:`curve_matrix` on two labelled sets; each set runs through the model once."""
    from .docpass import PassConfig
    pass_config = pass_config or PassConfig()
    positive, negative = choose_positive(train.labels, positive, train.source or "seed data")
    known = set(train.labels)
    for i, label in enumerate(test.labels):
        if label not in known:
            raise ValueError(f"{test.where(i)}: unknown label {label!r} (the seed labels are "
                             f"{', '.join(repr(x) for x in sorted(map(str, known)))})")
    kwargs: dict[str, Any] = dict(pass_config=pass_config, model_config=model_config,
                                  ray_address=ray_address, workers=workers, progress=progress)
    seeds = pooled_features(session, train.texts, desc="seed documents", **kwargs)
    held = pooled_features(session, test.texts, desc="held-out documents", **kwargs)
    curve = curve_matrix(seeds.pooled, np.array([x == positive for x in train.labels]),
                         held.pooled, np.array([x == positive for x in test.labels]),
                         seeds.index, fractions=fractions, repeats=repeats, seed=seed,
                         max_features=max_features, candidates=candidates,
                         floor=pass_config.threshold)
    return {"positive": positive, "negative": negative, "train": train.source,
            "test": test.source, "train_documents": len(train), "test_documents": len(test),
            **curve}


def plot_curve(curve: dict, path: Path) -> Path:
    """Held-out F1 against the fraction of seed data (mean, min-max band, full-data line)."""
    import warnings

    import matplotlib
    warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [p["fraction"] for p in curve["points"]]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.fill_between(x, [p["f1_min"] for p in curve["points"]],
                    [p["f1_max"] for p in curve["points"]], alpha=0.25, label="min-max")
    ax.plot(x, [p["f1_mean"] for p in curve["points"]], marker="o", label="mean F1")
    if curve["full_f1"] is not None:
        ax.axhline(curve["full_f1"], linestyle="--", color="gray", label="all seeds")
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{f:g}" for f in x])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("fraction of seed data")
    ax.set_ylabel("held-out F1")
    ax.set_title(f"Learning curve ({curve['repeats']} repeats)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
