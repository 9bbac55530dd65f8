"""Per-feature statistics of one dictionary block (a CLT layer, or one SAE) that merge exactly.

A :class:`BlockStats` holds, for each of the block's ``F`` features:

- ``count`` firing tokens (activation > 0), ``n_tokens`` tokens seen (the block-wide total);
- ``sum`` and ``sum_sq`` of activations (float64), ``max`` and ``min_active`` (float32);
- ``hist``: counts in fixed log-spaced bins (:class:`HistogramBins`), the same bins for every
  shard, so histograms add;
- ``top``: the ``k`` highest activations, and ``sample``: a uniform random sample of ``s``
  firing tokens, each as an :class:`ExampleSet` (token window, per-token activations, and the
  strongest features of the same block at that token, for co-activation).

Every part merges associatively and commutatively: counts and histograms add; max/min take the
extreme; example sets keep the best ``k`` by a total order (key descending, then global token
index ascending), so ties never depend on who saw what first. The random sample is bottom-``s``
by a hash of the global token index (``priority``), which is a uniform sample that any split of
the corpus reproduces. Only the float sums depend on the order of additions; the pass adds shard
results in shard order, so every way of running it adds in the same order (``collect.py``).

Memory is ``F × (k + s) × window`` plus ``F × bins``: independent of the corpus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

EMPTY = -1  # gidx / token / partner of an unused slot


@dataclass(frozen=True)
class StatsConfig:
    """What each block keeps; part of a run's identity (a resumed run must use the same)."""

    top_k: int = 16  # highest activations kept per feature
    samples: int = 24  # uniform random firing tokens kept per feature
    before: int = 15  # window: tokens before the example's token
    after: int = 4  # window: tokens after it
    partners: int = 8  # strongest other features recorded at each example token
    bins: int = 256  # log-spaced histogram bins ...
    hist_min: float = 1e-4  # ... from here (the first bin holds everything below)
    hist_max: float = 1e4  # ... to here (the last bin holds everything above)

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    def check(self) -> None:
        for name in ("top_k", "samples", "partners", "bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.before < 0 or self.after < 0:
            raise ValueError(f"window sizes must be >= 0, got before={self.before}, "
                             f"after={self.after}")
        if not 0 < self.hist_min < self.hist_max:
            raise ValueError(f"histogram range must satisfy 0 < min < max, got "
                             f"{self.hist_min}..{self.hist_max}")
        if self.bins < 3:
            raise ValueError(f"bins must be at least 3 (below, inside, above), got {self.bins}")


class HistogramBins:
    """Bin ``0`` holds values below ``hist_min``, bin ``bins-1`` values at or above ``hist_max``,
    and the bins between split ``[hist_min, hist_max)`` into equal steps of log(value)."""

    def __init__(self, config: StatsConfig) -> None:
        self.edges = np.geomspace(config.hist_min, config.hist_max, config.bins - 1)

    def tensor(self, device) -> torch.Tensor:
        return torch.as_tensor(self.edges, dtype=torch.float64, device=device)

    def centers(self) -> np.ndarray:
        """A representative value per bin: the geometric middle (the outer bins: their edge)."""
        inner = np.sqrt(self.edges[:-1] * self.edges[1:])
        return np.concatenate([[self.edges[0]], inner, [self.edges[-1]]])


# --- example sets ------------------------------------------------------------------------------
@dataclass
class ExampleSet:
    """``k`` examples per feature, best first. Shapes: ``[F, k]``, windows ``[F, k, W]``,
    partners ``[F, k, P]``. An unused slot has key ``-inf`` and gidx ``EMPTY``."""

    key: torch.Tensor  # float64: activation (top) or -priority (sample)
    gidx: torch.Tensor  # int64: global token index = context index * ctx_len + position
    value: torch.Tensor  # float32 activation at the token
    acts: torch.Tensor  # float32 activations of this feature over the window
    tokens: torch.Tensor  # int32 token ids of the window (EMPTY outside the context)
    partners: torch.Tensor  # int32 the block's strongest features at the token (may include self)

    @classmethod
    def empty(cls, width: int, k: int, window: int, partners: int, device) -> ExampleSet:
        return cls(key=torch.full((width, k), -math.inf, dtype=torch.float64, device=device),
                   gidx=torch.full((width, k), EMPTY, dtype=torch.int64, device=device),
                   value=torch.zeros(width, k, device=device),
                   acts=torch.zeros(width, k, window, device=device),
                   tokens=torch.full((width, k, window), EMPTY, dtype=torch.int32, device=device),
                   partners=torch.full((width, k, partners), EMPTY, dtype=torch.int32,
                                       device=device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def merged(self, other: ExampleSet) -> ExampleSet:
        """The best ``k`` of both, by (key descending, gidx ascending); empties sort last."""
        k = self.key.shape[1]
        both = {name: torch.cat([a, other.tensors()[name]], dim=1)
                for name, a in self.tensors().items()}
        # Two stable sorts give the lexicographic order: by gidx first, then by key.
        order = torch.sort(both["gidx"], dim=1, stable=True).indices
        order = order.gather(1, torch.sort(both["key"].gather(1, order), dim=1, descending=True,
                                           stable=True).indices)[:, :k]
        return ExampleSet(**{name: _take(t, order) for name, t in both.items()})


def _take(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    index = order.view(*order.shape, *([1] * (t.ndim - 2))).expand(*order.shape, *t.shape[2:])
    return t.gather(1, index)


def best_rows(key: torch.Tensor, k: int) -> torch.Tensor:
    """Row indices ``[k', F]`` (k' = min(k, rows)) of the ``k`` largest keys per column, ties to
    the lower row: the same total order as :meth:`ExampleSet.merged` (rows are in gidx order).
    ``topk`` alone leaves ties unordered, so a tie at the cut falls back to a stable sort."""
    rows = key.shape[0]
    if rows <= k:
        return torch.sort(key, dim=0, descending=True, stable=True).indices
    values, index = key.topk(k + 1, dim=0)
    boundary_tie = (values[k - 1] == values[k]) & (values[k] > -math.inf)
    if bool(boundary_tie.any()):  # the order inside the k does not matter: merged() sorts
        return torch.sort(key, dim=0, descending=True, stable=True).indices[:k]
    return index[:k]


# --- one block ---------------------------------------------------------------------------------
@dataclass
class BlockStats:
    n_tokens: torch.Tensor  # int64 scalar
    count: torch.Tensor  # int64 [F]
    sum: torch.Tensor  # float64 [F]
    sum_sq: torch.Tensor  # float64 [F]
    max: torch.Tensor  # float32 [F]; 0 for a feature that never fired
    min_active: torch.Tensor  # float32 [F]; +inf for a feature that never fired
    hist: torch.Tensor  # int64 [F, bins]
    top: ExampleSet
    sample: ExampleSet

    @classmethod
    def empty(cls, width: int, config: StatsConfig, device="cpu") -> BlockStats:
        def examples(k: int) -> ExampleSet:
            return ExampleSet.empty(width, k, config.window, config.partners, device)
        return cls(n_tokens=torch.zeros((), dtype=torch.int64, device=device),
                   count=torch.zeros(width, dtype=torch.int64, device=device),
                   sum=torch.zeros(width, dtype=torch.float64, device=device),
                   sum_sq=torch.zeros(width, dtype=torch.float64, device=device),
                   max=torch.zeros(width, device=device),
                   min_active=torch.full((width,), math.inf, device=device),
                   hist=torch.zeros(width, config.bins, dtype=torch.int64, device=device),
                   top=examples(config.top_k), sample=examples(config.samples))

    @property
    def width(self) -> int:
        return self.count.shape[0]

    # --- update with one batch --------------------------------------------------------------
    @torch.no_grad()
    def update(self, acts: torch.Tensor, tokens: torch.Tensor, first_context: int,
               config: StatsConfig, edges: torch.Tensor) -> None:
        """Add a batch: ``acts`` ``[B, T, F]`` of this block, ``tokens`` ``[B, T]`` of contexts
        ``first_context .. first_context + B - 1``. Position 0 (the special first token) is not
        counted anywhere and shows activation 0 in windows."""
        acts = acts.detach().float()
        batch, ctx_len, width = acts.shape
        acts = torch.cat([torch.zeros_like(acts[:, :1]), acts[:, 1:]], dim=1)
        flat = acts[:, 1:].reshape(-1, width)  # [N, F] rows in (context, position) order
        rows = torch.arange(flat.shape[0], device=acts.device)
        ctx = rows // (ctx_len - 1)
        pos = rows % (ctx_len - 1) + 1
        gidx = (ctx + first_context) * ctx_len + pos
        firing = flat > 0

        self.n_tokens += flat.shape[0]
        self.count += firing.sum(0)
        self.sum += flat.sum(0, dtype=torch.float64)
        self.sum_sq += (flat.double() ** 2).sum(0)
        self.max = torch.maximum(self.max, flat.max(0).values.clamp_min(0))
        self.min_active = torch.minimum(
            self.min_active, torch.where(firing, flat, math.inf).min(0).values)

        row, feature = firing.nonzero(as_tuple=True)
        bins = torch.bucketize(flat[row, feature].double(), edges, right=True)
        self.hist.view(-1).index_add_(0, feature * config.bins + bins,
                                      torch.ones_like(bins, dtype=torch.int64))

        n_partners = min(config.partners, width)
        strongest = flat.topk(n_partners, dim=1)
        partners = torch.where(strongest.values > 0, strongest.indices, EMPTY).to(torch.int32)
        if n_partners < config.partners:
            partners = torch.cat([partners, partners.new_full(
                (partners.shape[0], config.partners - n_partners), EMPTY)], dim=1)

        def candidates(key: torch.Tensor, k: int) -> ExampleSet:
            chosen = best_rows(key, k)  # [k', F]
            keys = key.gather(0, chosen)
            valid = keys > -math.inf
            c_ctx, c_pos = ctx[chosen], pos[chosen]
            offsets = torch.arange(-config.before, config.after + 1, device=acts.device)
            w_pos = c_pos.unsqueeze(-1) + offsets  # [k', F, W]
            inside = (w_pos >= 0) & (w_pos < ctx_len) & valid.unsqueeze(-1)
            w_pos = w_pos.clamp(0, ctx_len - 1)
            f_idx = torch.arange(width, device=acts.device).view(1, width, 1)
            w_acts = acts[c_ctx.unsqueeze(-1), w_pos, f_idx]
            w_tokens = tokens.to(acts.device)[c_ctx.unsqueeze(-1), w_pos].to(torch.int32)
            found = ExampleSet(
                key=keys.T, gidx=torch.where(valid, gidx[chosen], EMPTY).T,
                value=torch.where(valid, flat.gather(0, chosen), 0).T,
                acts=(torch.where(inside, w_acts, 0) + 0.0).transpose(0, 1),  # no -0.0
                tokens=torch.where(inside, w_tokens, EMPTY).transpose(0, 1),
                partners=torch.where(valid.unsqueeze(-1), partners[chosen], EMPTY
                                     ).transpose(0, 1))
            pad = k - found.key.shape[1]
            if pad:
                found = found.merged(ExampleSet.empty(width, pad, config.window,
                                                      config.partners, acts.device))
            return found

        top_key = torch.where(firing, flat.double(), -math.inf)
        self.top = self.top.merged(candidates(top_key, config.top_k))
        priority = torch.as_tensor(token_priority(gidx.cpu().numpy()), device=acts.device)
        sample_key = torch.where(firing, -priority.unsqueeze(1), -math.inf)
        self.sample = self.sample.merged(candidates(sample_key, config.samples))

    # --- merge and storage --------------------------------------------------------------------
    def merge(self, other: BlockStats) -> BlockStats:
        """Both blocks' statistics in one (``self`` first in the float sums)."""
        return BlockStats(
            n_tokens=self.n_tokens + other.n_tokens, count=self.count + other.count,
            sum=self.sum + other.sum, sum_sq=self.sum_sq + other.sum_sq,
            max=torch.maximum(self.max, other.max),
            min_active=torch.minimum(self.min_active, other.min_active),
            hist=self.hist + other.hist, top=self.top.merged(other.top),
            sample=self.sample.merged(other.sample))

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}{f.name}": getattr(self, f.name) for f in fields(self)
               if f.name not in ("top", "sample")}
        for part in ("top", "sample"):
            out.update({f"{prefix}{part}.{name}": t
                        for name, t in getattr(self, part).tensors().items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> BlockStats:
        def get(name: str) -> torch.Tensor:
            return tensors[f"{prefix}{name}"]
        sets = {part: ExampleSet(**{f.name: get(f"{part}.{f.name}") for f in fields(ExampleSet)})
                for part in ("top", "sample")}
        plain = {f.name: get(f.name) for f in fields(cls) if f.name not in sets}
        return cls(**plain, **sets)

    def to(self, device) -> BlockStats:
        return BlockStats.from_tensors({k: v.to(device) for k, v in self.tensors().items()})


def token_priority(gidx: np.ndarray) -> np.ndarray:
    """A pseudo-random priority in ``[0, 2**53)`` per global token index (SplitMix64's
    finalizer), exact in float64: the random sample keeps the firing tokens of lowest priority."""
    z = gidx.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64)
