"""Anomaly features: features over-represented in flagged tokens (code-switching, repetition),
and a generation monitor that reports them and can suppress them.

**Enrichment** (per detector). The document pass (``docpass``, ``mode="tokens"``) gives every
token's features; a detector (``detectors``) flags tokens. Over all N tokens of the corpus, N1
flagged and N0 = N - N1 clean; a feature fires (activation > the pass threshold) on ``a``
flagged and ``b`` clean tokens, K = a + b in all. Then:

- p-value: one-sided Fisher exact test for over-representation, i.e. the hypergeometric tail
  ``P(X >= a)`` with X ~ Hypergeometric(N, K, N1) (``scipy.stats.hypergeom.sf(a - 1, N, K, N1)``);
  p = 1 for a feature that never fires;
- q-value: Benjamini-Hochberg (1995) over every feature of the session (never-firing ones count,
  with p = 1): ``q_(i) = min_{j >= i} m p_(j) / j``, capped at 1;
- effect: the log odds ratio with the Haldane-Anscombe correction (0.5 added to each cell):
  ``ln((a + .5)(N0 - b + .5) / ((b + .5)(N1 - a + .5)))``;
- ranking: features whose firing rate is higher in flagged than in clean tokens (a / N1 >
  b / N0), by q ascending, then log odds descending, then column.

**Monitor**: generate from prompts (``generate``) watching given SAE features; per feature, the
generated tokens on which it fires (events with activation). With ``suppress``, the same
generations again with the watched features suppressed, either ``"clamp"`` (activation set to 0
at every position, the SAE error kept: ``qwen_interp_saelens.steering.clamp``; only positions
where the feature is active change) or ``"subtract"`` (``h -= s * W_dec[:, f]`` at every
position: Qwen-Scope steering with strength -s); the report gives fire counts without and with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import detectors as D
from .docpass import TOKENS, DocumentFeatures, PassConfig, document_features
from .generate import Generation, generate, merge, sae_feature
from .model import FeatureIndex, ModelConfig, feature_index

CLAMP, SUBTRACT = "clamp", "subtract"


@dataclass
class FeatureEnrichment:
    feature: str
    column: int
    flagged_fires: int  # a
    clean_fires: int  # b
    flagged_rate: float  # a / N1
    clean_rate: float  # b / N0
    log_odds: float
    p_value: float
    q_value: float


@dataclass
class DetectorResult:
    detector: str
    flagged_tokens: int
    clean_tokens: int
    flagged_documents: int
    ranking: list[FeatureEnrichment]  # over-represented features, best first (all of them)


@dataclass
class AnomalyResult:
    n_documents: int
    n_tokens: int
    truncated: int
    threshold: float
    detectors: dict[str, DetectorResult]
    settings: dict = field(default_factory=dict)

    def to_json(self, top: int | None = None) -> dict:
        out = asdict(self)
        for result in out["detectors"].values():
            result["over_represented"] = len(result["ranking"])
            result["ranking"] = result["ranking"][:top] if top else result["ranking"]
        return out


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values of ``p`` (same order)."""
    p = np.asarray(p, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def enrichment(tokens: sp.csr_matrix, flagged: np.ndarray, index: FeatureIndex
               ) -> list[FeatureEnrichment]:
    """Over-represented features of ``tokens`` (tokens x features, stored = fires) among the
    ``flagged`` rows, ranked (module docstring)."""
    from scipy.stats import hypergeom
    flagged = np.asarray(flagged, dtype=bool)
    if tokens.shape[0] != len(flagged):
        raise ValueError(f"{len(flagged)} flags for {tokens.shape[0]} tokens")
    fires = tokens.copy().tocsr()
    fires.data = np.ones_like(fires.data, dtype=np.int64)
    total = np.asarray(fires.sum(axis=0)).ravel().astype(np.int64)
    a = np.asarray(fires[flagged].sum(axis=0)).ravel().astype(np.int64)
    b = total - a
    n, n1 = len(flagged), int(flagged.sum())
    n0 = n - n1
    p = np.where(total > 0, hypergeom.sf(a - 1, n, total, n1), 1.0)
    p = np.clip(p, 0.0, 1.0)
    q = benjamini_hochberg(p)
    log_odds = np.log((a + 0.5) * (n0 - b + 0.5) / ((b + 0.5) * (n1 - a + 0.5)))
    rate1 = a / n1 if n1 else np.zeros(len(a))
    rate0 = b / n0 if n0 else np.zeros(len(b))
    keep = np.flatnonzero((rate1 > rate0) & (total > 0))
    keep = keep[np.lexsort((keep, -log_odds[keep], q[keep]))]
    return [FeatureEnrichment(feature=index.name(int(c)), column=int(c), flagged_fires=int(a[c]),
                              clean_fires=int(b[c]), flagged_rate=float(rate1[c]),
                              clean_rate=float(rate0[c]), log_odds=float(log_odds[c]),
                              p_value=float(p[c]), q_value=float(q[c])) for c in keep]


def flag_tokens(features: DocumentFeatures, tokenizer, detector: str, **options) -> np.ndarray:
    """The detector's mask over every token of a ``mode="tokens"`` pass, document by document
    (the very token ids the pass ran)."""
    assert features.token_ids is not None and features.doc_offsets is not None
    ids, offsets = features.token_ids, features.doc_offsets
    masks = [D.detect(detector, tokenizer, ids[offsets[i]:offsets[i + 1]].tolist(), **options)
             for i in range(features.n_documents)]
    return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)


def find_anomaly_features(session, texts: Sequence[str], *,
                          detectors: Sequence[str] = D.DETECTORS, n: int = 4, repeats: int = 3,
                          window: int | None = None, config: PassConfig | None = None,
                          model_config: ModelConfig | None = None,
                          ray_address: str | None = None, workers: int | None = None,
                          progress: bool = True) -> AnomalyResult:
    """Run the per-token document pass over ``texts`` and rank, per detector, the features
    over-represented in its flagged tokens."""
    for name in detectors:
        if name not in D.DETECTORS:
            raise ValueError(f"unknown detector {name!r}: expected one of "
                             f"{', '.join(D.DETECTORS)}")
    config = config or PassConfig()
    features = document_features(session, texts, config=config, mode=TOKENS,
                                 model_config=model_config, ray_address=ray_address,
                                 workers=workers, progress=progress, desc="anomalies")
    tokenizer = session.model.tokenizer
    results = {}
    for name in detectors:
        mask = flag_tokens(features, tokenizer, name, n=n, repeats=repeats, window=window)
        assert features.doc_offsets is not None
        per_doc: np.ndarray | list = (np.add.reduceat(mask, features.doc_offsets[:-1])
                                      if len(mask) else [])
        results[name] = DetectorResult(
            detector=name, flagged_tokens=int(mask.sum()), clean_tokens=int((~mask).sum()),
            flagged_documents=int(np.count_nonzero(per_doc)),
            ranking=enrichment(features.tokens, mask, features.index))
    return AnomalyResult(n_documents=features.n_documents, n_tokens=int(features.n_tokens.sum()),
                         truncated=features.truncated, threshold=config.threshold,
                         detectors=results,
                         settings={"n": n, "repeats": repeats, "window": window,
                                   "max_tokens": config.max_tokens})


SIGNIFICANT = 0.05  # the q-value the printed count uses (the ranking keeps every feature)


def format_table(result: DetectorResult, top: int) -> str:
    lines = [f"{result.detector}: {result.flagged_tokens} flagged tokens in "
             f"{result.flagged_documents} documents, {result.clean_tokens} clean; "
             f"{sum(r.q_value < SIGNIFICANT for r in result.ranking)} features significantly "
             f"over-represented (q < {SIGNIFICANT}), {len(result.ranking)} with a higher rate"]
    if result.ranking:
        lines.append(f"  {'rank':>4}  {'feature':<14} {'flagged':>9} {'clean':>9} "
                     f"{'log OR':>7} {'p':>9} {'q':>9}")
    for i, row in enumerate(result.ranking[:top], 1):
        lines.append(f"  {i:>4}  {row.feature:<14} {row.flagged_rate:>9.3f} "
                     f"{row.clean_rate:>9.3f} {row.log_odds:>7.2f} {row.p_value:>9.2e} "
                     f"{row.q_value:>9.2e}")
    return "\n".join(lines)


def plot_rates(result: DetectorResult, path: Path, top: int = 15) -> None:
    """Bars: the top features' firing rates in flagged vs clean tokens."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = result.ranking[:top]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(rows) + 2), 3.6))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.flagged_rate for r in rows], 0.4, label="flagged tokens",
           color="#c0392b")
    ax.bar(x + 0.2, [r.clean_rate for r in rows], 0.4, label="clean tokens", color="#7f8c8d")
    ax.set_xticks(x, [r.feature for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("firing rate")
    ax.set_title(f"{result.detector}: top features by q-value\n"
                 f"({result.flagged_tokens} flagged / {result.clean_tokens} clean tokens)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from qwen_interp.atomic import replace_file
    replace_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


# --- the monitor ------------------------------------------------------------------------------
@dataclass
class MonitorRun:
    suppressed: bool
    fires: dict[str, int]  # feature -> generated tokens on which it fires
    generated_tokens: int
    events: list[dict]  # {prompt, position, token, feature, activation}
    generations: list[dict]  # {prompt, continuation}


def monitor(session, prompts: Sequence[str], watch: Sequence[str], *,
            steer: dict[int, dict[int, float]] | None = None, suppress: str | None = None,
            suppress_strength: float = 8.0, max_new_tokens: int = 24, temperature: float = 0.0,
            seed: int = 0, threshold: float = 0.0, model_name: str = "") -> list[MonitorRun]:
    """Generate from each prompt watching ``watch`` (``sae/L:F``), under ``steer`` if given;
    with ``suppress`` (``"clamp"`` or ``"subtract"``) a second run with them suppressed."""
    if suppress not in (None, CLAMP, SUBTRACT):
        raise ValueError(f"suppress must be {CLAMP!r} or {SUBTRACT!r}, got {suppress!r}")
    if not watch:
        raise ValueError("give the features to watch (sae/L:F)")
    index = feature_index(session)
    targets = [sae_feature(index, name) for name in watch]
    runs = [_monitor_run(session, prompts, watch, index, merge(steer), None, False,
                         max_new_tokens, temperature, seed, threshold, model_name)]
    if suppress == CLAMP:
        clamp = merge({layer: {f: 0.0} for layer, f in targets})
        runs.append(_monitor_run(session, prompts, watch, index, merge(steer), clamp, True,
                                 max_new_tokens, temperature, seed, threshold, model_name))
    elif suppress == SUBTRACT:
        minus = [{layer: {f: -suppress_strength}} for layer, f in targets]
        runs.append(_monitor_run(session, prompts, watch, index, merge(steer, *minus), None,
                                 True, max_new_tokens, temperature, seed, threshold, model_name))
    return runs


def _monitor_run(session, prompts, watch, index, add, clamp, suppressed, max_new_tokens,
                 temperature, seed, threshold, model_name) -> MonitorRun:
    fires = {name: 0 for name in watch}
    events, generations, total = [], [], 0
    for p, prompt in enumerate(prompts):
        g: Generation = generate(session, prompt, max_new_tokens=max_new_tokens, add=add,
                                 clamp=clamp, watch=watch, index=index, temperature=temperature,
                                 seed=seed + p, model_name=model_name)
        total += len(g.token_ids)
        generations.append({"prompt": prompt, "continuation": g.continuation})
        for name, values in g.watched.items():
            for position, value in enumerate(values):
                if value > threshold:
                    fires[name] += 1
                    events.append({"prompt": p, "position": position, "token": g.tokens[position],
                                   "feature": name, "activation": value})
    return MonitorRun(suppressed=suppressed, fires=fires, generated_tokens=total, events=events,
                      generations=generations)
