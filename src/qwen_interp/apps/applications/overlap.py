"""Which features several datasets activate, and how much those sets overlap (Qwen-Scope's
benchmark-redundancy application, docs/applications.md: the paper finds 63 % of GSM8K's
features in MATH).

- **A dataset's feature set**: feature f is in dataset D's set when it fires (pooled activation,
  the maximum over a document's tokens, ``> threshold``, default 0) in at least ``min_docs(D)``
  of D's documents, where ``min_docs(D)`` is ``--min-docs`` if given, else
  ``max(1, ceil(min_fraction * |D|))`` (``min_fraction`` default 0.01: a feature must fire in 1 %
  of the documents, so sets of datasets of different sizes are comparable and one stray
  document does not add features to a large dataset).
- **Coverage**: ``C[a][b] = |A ∩ B| / |A|``, the share of A's features that B also activates (the
  diagonal is 1; ``None`` when A is empty). Also ``|A ∩ B|`` and the Jaccard index
  ``|A ∩ B| / |A ∪ B|``, for reference.
- **Most redundant pair**: the ordered pair ``(a, b)``, ``a != b``, with the largest ``C[a][b]``
  (A is the dataset best covered by another); ties: the first in row-major order.
- **Stability under subsampling**: ``repeats`` times, each dataset is subsampled to
  ``max(1, round(fraction * |D|))`` documents (without replacement; repeat r draws with
  ``numpy.random.default_rng([seed, r, d])`` for dataset number d), the sets (with ``min_docs``
  recomputed from the subsample's size unless ``--min-docs`` fixes it) and the matrix are
  recomputed, and the off-diagonal coverage values are compared with the full data's by
  Spearman's rank correlation (``scipy.stats.spearmanr``; ``None`` when either side is
  constant). Reported: every repeat's correlation, their mean and minimum, and how often the full
  data's most redundant pair is still a most redundant pair (largest value, ties allowed) of the
  subsample.

The documents run through the model once (``docpass``, pooled); subsamples reuse those rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from .model import FeatureIndex, ModelConfig

if TYPE_CHECKING:  # torch loads with the document pass, not with the command line's parser
    from .docpass import PassConfig

DEFAULT_MIN_FRACTION = 0.01
DEFAULT_FRACTION = 0.5
DEFAULT_REPEATS = 10


def min_docs_for(n_documents: int, min_docs: int | None, min_fraction: float) -> int:
    """The documents a feature must fire in to be in a dataset's set."""
    if min_docs is not None:
        return min_docs
    return max(1, math.ceil(min_fraction * n_documents))


def feature_set(pooled: sp.spmatrix, *, threshold: float = 0.0, min_docs: int = 1
                ) -> np.ndarray:
    """Boolean mask over features: fires (> ``threshold``) in at least ``min_docs`` documents."""
    fires = sp.csr_matrix(pooled) > threshold
    counts = np.asarray(fires.sum(axis=0)).ravel()
    return counts >= min_docs


@dataclass
class OverlapMatrix:
    names: list[str]
    sizes: list[int]  # |A|
    intersection: np.ndarray  # |A ∩ B|
    coverage: np.ndarray  # |A ∩ B| / |A| (nan where |A| = 0)
    jaccard: np.ndarray  # |A ∩ B| / |A ∪ B| (nan where both are empty)

    def most_redundant(self) -> tuple[int, int] | None:
        """(a, b): the largest off-diagonal coverage, first in row-major order; None if none is
        defined."""
        values = off_diagonal(self.coverage)
        if np.all(np.isnan(values)):
            return None
        best = np.nanmax(values)
        n = len(self.names)
        for a in range(n):
            for b in range(n):
                if a != b and self.coverage[a, b] == best:
                    return a, b
        return None

    def top_pairs(self) -> set[tuple[int, int]]:
        values = off_diagonal(self.coverage)
        if np.all(np.isnan(values)):
            return set()
        best = np.nanmax(values)
        n = len(self.names)
        return {(a, b) for a in range(n) for b in range(n)
                if a != b and self.coverage[a, b] == best}

    def to_json(self) -> dict:
        def table(m: np.ndarray) -> list[list[float | None]]:
            return [[None if np.isnan(x) else float(x) for x in row] for row in m]
        pair = self.most_redundant()
        return {"names": self.names, "sizes": self.sizes,
                "intersection": self.intersection.astype(int).tolist(),
                "coverage": table(self.coverage), "jaccard": table(self.jaccard),
                "most_redundant": None if pair is None else {
                    "covered": self.names[pair[0]], "by": self.names[pair[1]],
                    "coverage": float(self.coverage[pair])}}


def off_diagonal(matrix: np.ndarray) -> np.ndarray:
    """Row-major off-diagonal entries."""
    n = matrix.shape[0]
    return matrix[~np.eye(n, dtype=bool)]


def coverage_matrix(sets: Mapping[str, np.ndarray]) -> OverlapMatrix:
    """The coverage matrix of boolean feature masks (equal length), by name in order."""
    names = list(sets)
    masks = np.stack([np.asarray(sets[n], bool) for n in names]).astype(np.int64)
    inter = masks @ masks.T
    sizes = masks.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        coverage = np.where(sizes[:, None] > 0, inter / np.maximum(sizes[:, None], 1), np.nan)
        jaccard = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return OverlapMatrix(names, sizes.astype(int).tolist(), inter, coverage, jaccard)


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import spearmanr
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(spearmanr(a, b).statistic)


def overlap_from_pooled(pooled: Mapping[str, sp.spmatrix], *, threshold: float = 0.0,
                        min_docs: int | None = None,
                        min_fraction: float = DEFAULT_MIN_FRACTION,
                        fraction: float = DEFAULT_FRACTION, repeats: int = DEFAULT_REPEATS,
                        seed: int = 0) -> dict:
    """Sets, matrix and stability (module docstring) from each dataset's pooled matrix
    (documents x features). Returns ``{"matrix": OverlapMatrix, "sets": {name: mask},
    "min_docs": {...}, "stability": {...}}``."""
    if len(pooled) < 2:
        raise ValueError(f"overlap needs at least 2 datasets, got {len(pooled)}")
    if min_docs is not None and min_docs < 1:
        raise ValueError(f"min_docs must be at least 1, got {min_docs}")
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if repeats < 0:
        raise ValueError(f"repeats must be at least 0, got {repeats}")
    pooled = {name: sp.csr_matrix(m) for name, m in pooled.items()}
    needs = {name: min_docs_for(m.shape[0], min_docs, min_fraction)
             for name, m in pooled.items()}
    sets = {name: feature_set(m, threshold=threshold, min_docs=needs[name])
            for name, m in pooled.items()}
    full = coverage_matrix(sets)
    full_values = off_diagonal(full.coverage)
    full_pair = full.most_redundant()
    correlations, kept = [], 0
    for r in range(repeats):
        subsets = {}
        for d, (name, m) in enumerate(pooled.items()):
            n = m.shape[0]
            size = max(1, int(round(fraction * n)))
            rows = np.sort(np.random.default_rng([seed, r, d]).choice(n, size, replace=False))
            subsets[name] = feature_set(m[rows], threshold=threshold,
                                        min_docs=min_docs_for(size, min_docs, min_fraction))
        sub = coverage_matrix(subsets)
        correlations.append(_spearman(off_diagonal(sub.coverage), full_values))
        kept += full_pair is not None and full_pair in sub.top_pairs()
    defined = [c for c in correlations if c is not None]
    stability = {"fraction": fraction, "repeats": repeats, "seed": seed,
                 "spearman": correlations,
                 "spearman_mean": float(np.mean(defined)) if defined else None,
                 "spearman_min": float(np.min(defined)) if defined else None,
                 "spearman_undefined": len(correlations) - len(defined),
                 "top_pair_kept": kept, "top_pair_kept_fraction":
                     kept / repeats if repeats else None}
    return {"matrix": full, "sets": sets, "min_docs": needs, "stability": stability}


def overlap(session, datasets: Mapping[str, list[str]], *, threshold: float = 0.0,
            min_docs: int | None = None, min_fraction: float = DEFAULT_MIN_FRACTION,
            fraction: float = DEFAULT_FRACTION, repeats: int = DEFAULT_REPEATS, seed: int = 0,
            pass_config: PassConfig | None = None, model_config: ModelConfig | None = None,
            ray_address: str | None = None, workers: int | None = None,
            progress: bool = True) -> dict:
    """The overlap of ``datasets`` (name -> texts) on ``session``: :func:`overlap_from_pooled`
    after one document pass per dataset, plus per-dataset documents and tokens. The pass stores
    activations above ``threshold`` only (the same threshold as the sets)."""
    from dataclasses import replace

    from .docpass import PassConfig, document_features
    pass_config = pass_config or PassConfig()
    pass_config = replace(pass_config, threshold=threshold)
    pooled, info = {}, {}
    index: FeatureIndex | None = None
    for name, texts in datasets.items():
        docs = document_features(session, texts, config=pass_config, mode="pooled",
                                 model_config=model_config, ray_address=ray_address,
                                 workers=workers, progress=progress, desc=name)
        pooled[name], index = docs.pooled, docs.index
        info[name] = {"documents": docs.n_documents, "tokens": int(docs.n_tokens.sum()),
                      "truncated": docs.truncated}
    result = overlap_from_pooled(pooled, threshold=threshold, min_docs=min_docs,
                                 min_fraction=min_fraction, fraction=fraction,
                                 repeats=repeats, seed=seed)
    assert index is not None
    result.update(index=index, datasets=info, threshold=threshold,
                  min_fraction=None if min_docs is not None else min_fraction)
    return result


def record(result: dict) -> dict:
    """The JSON record of an :func:`overlap` result (feature sets apart: :func:`sets_record`)."""
    matrix: OverlapMatrix = result["matrix"]
    datasets = [{"name": name, **result.get("datasets", {}).get(name, {}),
                 "min_docs": result["min_docs"][name], "features": size}
                for name, size in zip(matrix.names, matrix.sizes)]
    return {"threshold": result.get("threshold"), "min_fraction": result.get("min_fraction"),
            "datasets": datasets, **matrix.to_json(), "stability": result["stability"]}


def sets_record(result: dict) -> dict[str, list[str]]:
    index: FeatureIndex = result["index"]
    return {name: index.names(np.flatnonzero(mask)) for name, mask in result["sets"].items()}


# --- report -------------------------------------------------------------------------------------
def plot_heatmap(rec: dict, path) -> None:
    import warnings

    import matplotlib
    warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = rec["names"]
    values = np.array([[np.nan if x is None else x for x in row] for row in rec["coverage"]])
    n = len(names)
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * n, 1.8 + 0.9 * n), dpi=110)
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), names, rotation=30, ha="right")
    ax.set_yticks(range(n), [f"{a} ({s})" for a, s in zip(names, rec["sizes"])])
    for a in range(n):
        for b in range(n):
            if not np.isnan(values[a, b]):
                ax.text(b, a, f"{values[a, b]:.2f}", ha="center", va="center",
                        color="white" if values[a, b] < 0.6 else "black", fontsize=9)
    ax.set_title("coverage |A ∩ B| / |A| (row A, column B)", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def html_page(rec: dict, png: bytes) -> str:
    import base64
    import html

    def cell(x) -> str:
        return "-" if x is None else f"{x:.3f}"
    names = rec["names"]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = "".join(
        f"<tr><th>{html.escape(a)} ({size})</th>"
        + "".join(f"<td>{cell(x)}</td>" for x in row) + "</tr>"
        for a, size, row in zip(names, rec["sizes"], rec["coverage"]))
    stab = rec["stability"]
    top = rec["most_redundant"]
    lines = [f"Feature sets: pooled activation &gt; {rec['threshold']} in at least min_docs "
             "documents (" + ", ".join(f"{html.escape(d['name'])}: {d['min_docs']} of "
                                       f"{d.get('documents', '?')}" for d in rec["datasets"])
             + ")."]
    if top:
        lines.append(f"Most redundant: {top['coverage']:.1%} of "
                     f"{html.escape(top['covered'])}'s features are also "
                     f"{html.escape(top['by'])}'s.")
    if stab["repeats"]:
        mean, low = stab["spearman_mean"], stab["spearman_min"]
        lines.append(f"Subsampling each dataset to {stab['fraction']:g} of its documents, "
                     f"{stab['repeats']} times: Spearman correlation with the full matrix mean "
                     f"{cell(mean)}, min {cell(low)}; the most redundant pair kept "
                     f"{stab['top_pair_kept']} of {stab['repeats']} times.")
    image = base64.b64encode(png).decode("ascii")
    css = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
           "img{max-width:100%}")
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Feature "
            f"overlap</title><style>{css}</style></head><body><h1>Feature overlap</h1>"
            + "".join(f"<p>{line}</p>" for line in lines)
            + f'<img alt="coverage heatmap" src="data:image/png;base64,{image}">'
            + f"<h2>Coverage |A ∩ B| / |A| (row A, column B)</h2><table><tr><th></th>{head}"
            + f"</tr>{rows}</table></body></html>\n")


def write_outputs(result: dict, folder) -> dict:
    """``overlap.json``, ``sets.json``, ``heatmap.png`` and ``overlap.html`` in ``folder``, each
    written atomically; returns the paths by kind."""
    import json
    from pathlib import Path

    from qwen_interp.atomic import replace_file
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rec = record(result)
    paths = {"record": out / "overlap.json", "sets": out / "sets.json",
             "heatmap": out / "heatmap.png", "html": out / "overlap.html"}

    def dump(data):
        text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
        return lambda tmp: tmp.write_text(text, encoding="utf-8")
    replace_file(paths["record"], dump(rec))
    replace_file(paths["sets"], dump(sets_record(result)))
    replace_file(paths["heatmap"], lambda tmp: plot_heatmap(rec, tmp))
    page = html_page(rec, paths["heatmap"].read_bytes())
    replace_file(paths["html"], lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return paths
