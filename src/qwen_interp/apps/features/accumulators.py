"""Per-feature statistics of one dictionary block (a CLT layer, or one SAE) that merge exactly.

A :class:`BlockStats` holds, for each of the block's ``F`` features:

- ``count`` firing tokens (activation > 0), ``n_tokens`` tokens seen (the block-wide total);
- ``sum`` and ``sum_sq`` of activations (float64; activations are >= 0 for every supported
  dictionary, so tokens that do not fire add nothing), ``max`` and ``min_active`` (float32);
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

import functools
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .settings import StatsConfig

__all__ = ["EMPTY", "BlockStats", "ExampleSet", "HistogramBins", "StatsConfig"]

EMPTY = -1  # gidx / token / partner of an unused slot


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

    def packed(self) -> dict[str, torch.Tensor]:
        """The used slots only (a shard's sets are mostly empty once floors apply): what Ray
        carries back. :meth:`unpacked` restores the set exactly."""
        feature, slot = (self.gidx != EMPTY).nonzero(as_tuple=True)
        return {"shape": torch.tensor(self.acts.shape), "feature": feature, "slot": slot,
                **{name: t[feature, slot] for name, t in self.tensors().items()}}

    @classmethod
    def unpacked(cls, packed: dict[str, torch.Tensor]) -> ExampleSet:
        width, k, window = packed["shape"].tolist()
        out = cls.empty(width, k, window, packed["partners"].shape[-1], "cpu")
        feature, slot = packed["feature"], packed["slot"]
        for name, t in out.tensors().items():
            t[feature, slot] = packed[name]
        return out

    def rows(self, index: torch.Tensor) -> ExampleSet:
        return ExampleSet(**{name: t[index] for name, t in self.tensors().items()})

    def with_rows(self, index: torch.Tensor, part: ExampleSet) -> ExampleSet:
        """This set with rows ``index`` replaced by ``part`` (in place)."""
        for name, t in self.tensors().items():
            t[index] = getattr(part, name)
        return self

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


class _Batch:
    """One batch's firing entries ``(row, feature)``, ready to offer to example sets."""

    def __init__(self, acts, flat, tokens, row, feature, value, gidx, config: StatsConfig
                 ) -> None:
        self.acts, self.flat, self.tokens = acts, flat, tokens
        self.row, self.feature, self.value = row, feature, value
        self.gidx, self.config = gidx, config

    def select(self, examples: ExampleSet, key: torch.Tensor, floor: torch.Tensor | None):
        """This batch's entries that can enter ``examples`` (``key`` per entry, float64), as
        ``(entries, key, features, slot, rank)``, or None. ``floor`` ``[F]``: a key that ``k``
        entries elsewhere in the corpus reach (see :func:`floors`); entries below it cannot be
        among the best ``k`` overall."""
        width, k = examples.key.shape
        # Only entries at or above their feature's current k-th key (and floor) can enter;
        # ties are kept: the merge orders them by gidx.
        bar = examples.key[:, k - 1] if floor is None else torch.maximum(examples.key[:, k - 1],
                                                                          floor)
        keep = (key >= bar[self.feature]).nonzero(as_tuple=True)[0]
        if keep.numel() == 0:
            return None
        feature, key = self.feature[keep], key[keep]
        # Per feature, the k best by (key desc, gidx asc): entries come in gidx order, so a
        # stable sort by key and then a stable sort by feature give that order within features.
        order = torch.argsort(key, descending=True, stable=True)
        order = order[torch.argsort(feature[order], stable=True)]
        by_feature = feature[order]
        counts = torch.bincount(by_feature, minlength=width)
        rank = torch.arange(len(order), device=key.device) - (counts.cumsum(0) - counts)[
            by_feature]
        chosen = order[rank < k]
        features, slot = torch.unique(feature[chosen], return_inverse=True)
        return keep[chosen], key[chosen], features, slot, rank[rank < k]

    def add(self, examples: ExampleSet, selected, partners: torch.Tensor) -> ExampleSet:
        """``examples`` with the ``selected`` entries merged in; ``partners`` ``[N, P]``."""
        if selected is None:
            return examples
        entries, key, features, slot, rank = selected
        # As wide as the most entries a feature brings (few, once the set has filled up).
        found = ExampleSet.empty(len(features), int(rank.max()) + 1, self.config.window,
                                 self.config.partners, key.device)
        found.key[slot, rank] = key
        found.gidx[slot, rank] = self.gidx[entries]
        found.value[slot, rank] = self.value[entries]
        acts, tokens = self.windows(self.row[entries], self.feature[entries])
        found.acts[slot, rank] = acts
        found.tokens[slot, rank] = tokens
        found.partners[slot, rank] = partners[self.row[entries]]
        merged = examples.rows(features).merged(found)
        return examples.with_rows(features, merged)

    def windows(self, row: torch.Tensor, feature: torch.Tensor):
        """Token ids and this feature's activations around each entry ``[E, W]``; position 0
        and positions outside the context: activation 0, outside: token EMPTY."""
        config = self.config
        ctx_len = self.acts.shape[1]
        ctx, pos = row // ctx_len, row % ctx_len
        offsets = torch.arange(-config.before, config.after + 1, device=row.device)
        w_pos = pos.unsqueeze(-1) + offsets
        inside = (w_pos >= 0) & (w_pos < ctx_len)
        w_pos = w_pos.clamp(0, ctx_len - 1)
        acts = self.acts[ctx.unsqueeze(-1), w_pos, feature.unsqueeze(-1)]
        acts = torch.where(inside & (w_pos > 0), acts, 0) + 0.0  # + 0.0: no -0.0
        tokens = self.tokens[ctx.unsqueeze(-1), w_pos].to(torch.int32)
        return acts, torch.where(inside, tokens, EMPTY)

    def partners(self, *selections) -> torch.Tensor:
        """``[N, P]``: the block's strongest features (by value, ties to the lower feature) at
        the tokens of the selected entries; EMPTY elsewhere and where fewer fire."""
        n_rows = self.flat.shape[0]
        table = torch.full((n_rows, self.config.partners), EMPTY, dtype=torch.int32,
                           device=self.row.device)
        needed = torch.zeros(n_rows, dtype=torch.bool, device=self.row.device)
        for selected in selections:
            if selected is not None:
                needed[self.row[selected[0]]] = True
        at = needed[self.row].nonzero(as_tuple=True)[0]  # entries at those tokens
        if at.numel() == 0:
            return table
        order = at[torch.argsort(self.value[at], descending=True, stable=True)]
        order = order[torch.argsort(self.row[order], stable=True)]
        rows = self.row[order]
        counts = torch.bincount(rows, minlength=n_rows)
        rank = torch.arange(len(order), device=rows.device) - (counts.cumsum(0) - counts)[rows]
        keep = rank < self.config.partners
        table[rows[keep], rank[keep]] = self.feature[order[keep]].to(torch.int32)
        return table


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
               config: StatsConfig, edges: torch.Tensor, floor: tuple | None = None) -> None:
        """Add a batch: ``acts`` ``[B, T, F]`` of this block, ``tokens`` ``[B, T]`` of contexts
        ``first_context .. first_context + B - 1``. Position 0 (the special first token) is not
        counted anywhere and shows activation 0 in windows (``acts`` is zeroed there in place).
        ``floor``: ``(top, sample)`` keys from :func:`floors` of statistics this block's will be
        merged with.

        Example selection works on the firing entries only (a few per token), and only on
        those that can still enter: at or above the feature's current k-th key. After the first
        batches almost nothing qualifies, so the cost is that of the dense sums."""
        acts = acts.detach().float()
        acts[:, 0] = 0  # in place (the encoder's own output): no copy of the batch
        _, ctx_len, width = acts.shape
        flat = acts.reshape(-1, width)  # [N, F], row = context * ctx_len + position
        firing = flat > 0

        self.n_tokens += acts.shape[0] * (ctx_len - 1)
        row, feature = firing.nonzero(as_tuple=True)  # row-major: rows ascend
        value = flat[row, feature]
        # float64 sums, deterministic (the exact-merge guarantee needs the same bits every
        # run): scattered over the firing entries on the CPU, where index_add_ runs in order;
        # dense on a GPU, where a scattered float add is not ordered but a reduction is.
        if flat.is_cuda:
            self.sum += flat.sum(0, dtype=torch.float64)
            self.sum_sq += (flat * flat).sum(0, dtype=torch.float64)
        else:
            value64 = value.double()
            self.sum.index_add_(0, feature, value64)
            self.sum_sq.index_add_(0, feature, value64 * value64)
        self.count += torch.bincount(feature, minlength=width)
        self.max = self.max.scatter_reduce(0, feature, value, "amax")
        self.min_active = self.min_active.scatter_reduce(0, feature, value, "amin")
        bins = torch.bucketize(value.double(), edges, right=True)
        self.hist.view(-1).index_add_(0, feature * config.bins + bins,
                                      torch.ones_like(bins, dtype=torch.int64))

        first = first_context * ctx_len
        batch = _Batch(acts, flat, tokens.to(acts.device), row, feature, value, first + row,
                       config)
        top_floor, sample_floor = floor if floor is not None else (None, None)
        top = batch.select(self.top, value.double(), top_floor)
        priority = _row_priorities(first, flat.shape[0], acts.device)
        sample = batch.select(self.sample, -priority[row], sample_floor)
        partners = batch.partners(top, sample)
        self.top = batch.add(self.top, top, partners)
        self.sample = batch.add(self.sample, sample, partners)

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

    def merge_(self, other: BlockStats) -> BlockStats:
        """:meth:`merge`, in place and touching only the features ``other`` has examples for
        (after the first shards, a few): the same result, a fraction of the work."""
        self.n_tokens += other.n_tokens
        self.count += other.count
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.max = torch.maximum(self.max, other.max)
        self.min_active = torch.minimum(self.min_active, other.min_active)
        self.hist += other.hist
        for part in ("top", "sample"):
            mine, theirs = getattr(self, part), getattr(other, part)
            rows = (theirs.gidx[:, 0] != EMPTY).nonzero(as_tuple=True)[0]  # best first
            if rows.numel():
                mine.with_rows(rows, mine.rows(rows).merged(theirs.rows(rows)))
        return self

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

    def packed(self) -> dict:
        """A compact copy for transfer: used example slots and non-zero histogram bins only."""
        bins = self.hist.view(-1).nonzero(as_tuple=True)[0]
        plain = {name: getattr(self, name) for name in
                 ("n_tokens", "count", "sum", "sum_sq", "max", "min_active")}
        return {**plain, "hist_shape": torch.tensor(self.hist.shape), "hist_index": bins,
                "hist_count": self.hist.view(-1)[bins], "top": self.top.packed(),
                "sample": self.sample.packed()}

    @classmethod
    def unpacked(cls, packed: dict) -> BlockStats:
        hist = torch.zeros(packed["hist_shape"].tolist(), dtype=torch.int64)
        hist.view(-1)[packed["hist_index"]] = packed["hist_count"]
        plain = {name: packed[name] for name in
                 ("n_tokens", "count", "sum", "sum_sq", "max", "min_active")}
        return cls(**plain, hist=hist, top=ExampleSet.unpacked(packed["top"]),
                   sample=ExampleSet.unpacked(packed["sample"]))

    def to(self, device) -> BlockStats:
        return BlockStats.from_tensors({k: v.to(device) for k, v in self.tensors().items()})


@functools.lru_cache(maxsize=4)
def _row_priorities(first: int, rows: int, device) -> torch.Tensor:
    """Priorities of a batch's rows, computed once for all its blocks (every CLT layer and
    SAE sees the same batch)."""
    return torch.as_tensor(token_priority(np.arange(first, first + rows)), device=device)


def token_priority(gidx: np.ndarray) -> np.ndarray:
    """A pseudo-random priority in ``[0, 2**53)`` per global token index (SplitMix64's
    finalizer), exact in float64: the random sample keeps the firing tokens of lowest priority."""
    z = gidx.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64)


def floors(stats: BlockStats, previous: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, the k-th best top key and sample key of ``stats`` (raised to ``previous``):
    ``k`` entries reach it. A later shard's entry below it can never be among the best ``k`` of
    a total that includes ``stats``, so it is skipped (:meth:`BlockStats.update`), and the
    merged total stays exactly the same: only the work shrinks."""
    top, sample = stats.top.key[:, -1].clone(), stats.sample.key[:, -1].clone()
    if previous is not None:
        top = torch.maximum(top, previous[0].to(top.device))
        sample = torch.maximum(sample, previous[1].to(sample.device))
    return top, sample
