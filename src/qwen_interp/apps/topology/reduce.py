"""Streamed randomized PCA: the lens and the clustering space, in bounded memory.

Halko, Martinsson and Tropp, "Finding structure with randomness" (SIAM Review 53, 2011),
Algorithm 4.4 (randomized range finder with ``q`` power iterations, re-orthonormalized at each
step) followed by Algorithm 5.1 (direct SVD of ``B = Q^T A``). ``A`` is the centred data
``X - 1 mean^T``; it is never formed: every product with it is taken chunk by chunk from ``X``
and corrected by the mean (``(X - 1 m^T) W = X W - 1 (m^T W)``), so a dense ``n x d`` source is
read ``4 + 2q`` times and never copied, and a scipy sparse source stays sparse.

Memory beyond the source: ``O(n l + d l)`` floats with ``l = components + oversample`` (for
573,440 x 2,048 and l = 26: 119 MB and 0.4 MB), plus one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Chunks = Callable[[], Iterable[np.ndarray]]  # each call: the rows of X in order, in chunks


@dataclass
class PCA:
    components: np.ndarray  # (m, d) principal axes, by decreasing variance
    mean: np.ndarray  # (d,)
    variance: np.ndarray  # (m,) variance along each axis
    total_variance: float  # sum of the variances of all d coordinates
    scores: np.ndarray  # (n, m) float32: the centred rows projected on the axes

    @property
    def explained_ratio(self) -> np.ndarray:
        return self.variance / self.total_variance if self.total_variance > 0 else self.variance


def _times(chunks: Chunks, right: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``(X - 1 m^T) @ right`` as float64, chunk by chunk (``shift = m^T right``)."""
    right32 = right.astype(np.float32)
    parts = [np.asarray(chunk @ right32, dtype=np.float64) - shift for chunk in chunks()]
    return np.concatenate(parts) if parts else np.zeros((0, right.shape[1]))


def _transpose_times(chunks: Chunks, left: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(X - 1 m^T)^T @ left`` (d x l), chunk by chunk."""
    out = np.zeros((mean.shape[0], left.shape[1]))
    start = 0
    for chunk in chunks():
        rows = left[start:start + chunk.shape[0]].astype(np.float32)
        out += np.asarray(chunk.T @ rows, dtype=np.float64)
        start += chunk.shape[0]
    return out - np.outer(mean, left.sum(axis=0))


def randomized_pca(chunks: Chunks, n_components: int, *, oversample: int = 10,
                   power_iters: int = 2, seed: int = 0) -> PCA:
    """The top ``n_components`` principal axes of the rows ``chunks()`` yields (dense arrays or
    scipy sparse matrices, any chunking), and the rows' scores on them."""
    n, total, sq = 0, None, 0.0
    for chunk in chunks():
        s = np.asarray(chunk.sum(axis=0), dtype=np.float64).ravel()
        total = s if total is None else total + s
        sq += float(chunk.multiply(chunk).sum()) if hasattr(chunk, "multiply") else \
            float(np.einsum("ij,ij->", chunk, chunk, dtype=np.float64))
        n += chunk.shape[0]
    if total is None or n < 2:
        raise ValueError(f"PCA needs at least 2 vectors, got {n}")
    d = total.shape[0]
    mean = total / n
    total_variance = max((sq - n * float(mean @ mean)) / (n - 1), 0.0)
    m = min(n_components, d, n)
    width = min(m + oversample, d, n)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((d, width))
    y = _times(chunks, omega, mean @ omega)
    for _ in range(power_iters):
        q, _ = np.linalg.qr(y)
        z, _ = np.linalg.qr(_transpose_times(chunks, q, mean))
        y = _times(chunks, z, mean @ z)
    q, _ = np.linalg.qr(y)
    b = _transpose_times(chunks, q, mean).T  # (l, d) = Q^T A
    _, s, vt = np.linalg.svd(b, full_matrices=False)
    axes = vt[:m]
    scores = _times(chunks, axes.T, mean @ axes.T).astype(np.float32)
    return PCA(components=axes, mean=mean, variance=s[:m] ** 2 / (n - 1),
               total_variance=total_variance, scores=scores)


def array_chunks(x, rows: int = 8192) -> Chunks:
    """``chunks`` over an in-memory or memory-mapped array (or a scipy sparse matrix): views,
    never copies of the whole."""
    def chunks():
        for start in range(0, x.shape[0], rows):
            yield x[start:start + rows]
    return chunks

