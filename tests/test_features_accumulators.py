"""The accumulators' algebra on random activations (CPU, fp32, exact unless stated): merging
shards equals one pass, in any grouping; in-place merge equals merge; floors and packing change
the work, never the result. The statistics against an independent reference are in
test_features_stats.py."""

from __future__ import annotations

import pytest
import torch

from qwen_interp.apps.features.accumulators import (BlockStats, HistogramBins, StatsConfig,
                                                    floors)

CONFIG = StatsConfig(top_k=4, samples=5, before=2, after=1, partners=3, bins=16)
EDGES = HistogramBins(CONFIG).tensor("cpu")
WIDTH, CTX = 7, 6


def batches(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        acts = torch.relu(torch.randn(3, CTX, WIDTH, generator=g) - 0.3)
        acts[0, 2, 1] = acts[1, 3, 1] = 2.5  # a tie across contexts: order by position decides
        out.append((acts, torch.randint(0, 500, (3, CTX), generator=g), 3 * i))
    return out


def run(parts, floor_from: BlockStats | None = None) -> BlockStats:
    stats = BlockStats.empty(WIDTH, CONFIG)
    floor = None if floor_from is None else {"b": floors(floor_from)}
    for acts, tokens, first in parts:
        stats.update(acts.clone(), tokens, first, CONFIG, EDGES,
                     None if floor is None else floor["b"])
    return stats


def assert_same(a: BlockStats, b: BlockStats, sums_exact: bool = True) -> None:
    for name, x in a.tensors().items():
        y = b.tensors()[name]
        if name in ("sum", "sum_sq") and not sums_exact:
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
        else:
            assert torch.equal(x, y), name


def test_shards_merged_equal_one_pass():
    data = batches(6)
    whole = run(data)
    assert int(whole.count.sum()) > 0
    # The tie at 2.5 (context 0 position 2, context 1 position 3): the earlier position first.
    assert whole.top.gidx[1, :2].tolist() == [2, CTX + 3]
    left, right = run(data[:2]), run(data[2:])
    assert_same(whole, left.merge(right), sums_exact=False)  # float sums: another grouping
    a, b, c = run(data[:2]), run(data[2:4]), run(data[4:])
    assert_same(a.merge(b).merge(c), a.merge(b.merge(c)), sums_exact=False)
    assert_same(a.merge(b), b.merge(a), sums_exact=False)


def test_in_place_merge_equals_merge():
    data = batches(4, seed=1)
    a, b = run(data[:2]), run(data[2:])
    expected = a.merge(b)
    copy = BlockStats.from_tensors({k: v.clone() for k, v in a.tensors().items()})
    assert_same(expected, copy.merge_(b))


def test_floors_change_the_work_not_the_result():
    data = batches(8, seed=2)
    first = run(data[:4])
    plain = run(data[4:])
    floored = run(data[4:], floor_from=first)
    kept = lambda s: int((s.top.gidx >= 0).sum() + (s.sample.gidx >= 0).sum())  # noqa: E731
    assert kept(floored) < kept(plain)  # the floor did skip entries
    assert_same(first.merge(plain), first.merge(floored))


def test_packed_round_trip_is_exact():
    stats = run(batches(3, seed=3))
    assert_same(stats, BlockStats.unpacked(stats.packed()))
    packed_numel = sum(t.numel() for part in ("top", "sample")
                       for t in stats.packed()[part].values())
    assert packed_numel > 0


@pytest.mark.parametrize("field,value", [("top_k", 0), ("bins", 2), ("before", -1)])
def test_bad_settings_are_refused(field, value):
    from dataclasses import replace
    with pytest.raises(ValueError, match=field if field != "before" else "window"):
        replace(CONFIG, **{field: value}).check()
