"""From merged statistics to what users read: a Parquet table per dictionary kind, and for a CLT
the ``features/`` sidecar circuit-tracer's graph viewer loads its feature panels from.

Derived values (see docs/feature-statistics.md):

- ``quantile_values``: the 1st..100th percentiles of a feature's firing activations, read off
  its log-spaced histogram (geometric interpolation inside a bin; exact at 100, the max);
- the viewer's ``histogram``: 50 equal-width bins over ``[act_min, act_max]``, each log bin's
  count placed at its geometric middle;
- quantile-stratified examples: the uniform random sample, sorted by activation and cut into
  ``QUANTILE_GROUPS`` equal parts: equal-probability bands of the firing distribution;
- top/bottom logits: the direct effect of the feature's decoder direction through the final
  norm's gain and the unembedding (for a CLT, the sum of its decoder rows over the layers it
  writes to), corpus-independent;
- co-active features: the features of the same block most often among the strongest at the
  feature's top examples, with counts.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .accumulators import EMPTY, BlockStats, ExampleSet, HistogramBins, StatsConfig

QUANTILE_GROUPS = 4
VIEWER_BINS = 50
LOGITS = 10


# --- token strings ------------------------------------------------------------------------------
@functools.cache
def _byte_decoder() -> dict[str, int]:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_strings(tokenizer):
    """id -> text, as the viewer shows it: a token's bytes decoded as UTF-8, or, for a token that
    is only part of a character, its bytes as ``\\xNN`` escapes (which the viewer merges with
    the next tokens, ``mergeHexEscapedMax``). Special tokens keep their name."""
    decoder = _byte_decoder()
    special = set(tokenizer.all_special_ids)

    @functools.lru_cache(maxsize=1 << 16)
    def text(token: int) -> str:
        piece = tokenizer.convert_ids_to_tokens(int(token))
        if token in special or piece is None or any(c not in decoder for c in piece):
            return piece if piece is not None else ""
        raw = bytes(decoder[c] for c in piece)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "".join(f"\\x{b:02x}" for b in raw)
    return text


# --- corpus-independent: logit effects ----------------------------------------------------------
@torch.no_grad()
def logit_effects(session, block: str, k: int = LOGITS, chunk: int = 512):
    """(top ids, top values, bottom ids, bottom values), each ``[F, k]``: the largest and
    smallest entries of ``(direction ⊙ final-norm gain) @ W_U`` per feature."""
    model = session.model
    kind, layer = block.split("/")
    gain = getattr(model.ln_final, "w", None)
    w_u = model.W_U
    if kind == "clt":
        width = int(model.transcoders.d_transcoder)
        direction = functools.partial(_clt_directions, model.transcoders, int(layer))
    else:
        sae = session.saes[int(layer)]
        width = int(sae.cfg.d_sae)
        direction = functools.partial(_sae_directions, sae)
    out: list[list[torch.Tensor]] = [[], [], [], []]
    for start in range(0, width, chunk):
        ids = torch.arange(start, min(start + chunk, width), device=w_u.device)
        d = direction(ids).to(w_u.dtype).to(w_u.device)
        if gain is not None:
            d = d * gain
        effect = (d @ w_u).float()
        kk = min(k, effect.shape[1])
        top, bottom = effect.topk(kk, dim=1), effect.topk(kk, dim=1, largest=False)
        for i, t in enumerate((top.indices, top.values, bottom.indices, bottom.values)):
            out[i].append(t.cpu())
    return tuple(torch.cat(parts).numpy() for parts in out)


def _sae_directions(sae, ids: torch.Tensor) -> torch.Tensor:
    return sae.W_dec[ids]


def _clt_directions(transcoders, layer: int, ids: torch.Tensor) -> torch.Tensor:
    vectors = transcoders._get_decoder_vectors(layer, ids)  # [n, n_targets, d_model]
    return vectors.sum(dim=1) if vectors.ndim == 3 else vectors


# --- derived per-feature values -----------------------------------------------------------------
def quantile_values(stats: BlockStats, config: StatsConfig) -> np.ndarray:
    """``[F, 100]``: percentiles 1..100 of each feature's firing activations (0 if it never
    fired)."""
    hist = stats.hist.numpy()
    count = stats.count.numpy()
    lo_all, hi_all = stats.min_active.numpy().astype(np.float64), stats.max.numpy().astype(
        np.float64)
    edges = HistogramBins(config).edges
    lower = np.concatenate([[0.0], edges])  # bin b covers [lower[b], upper[b])
    upper = np.concatenate([edges, [np.inf]])
    cum = hist.cumsum(axis=1)
    out = np.zeros((hist.shape[0], 100), dtype=np.float64)
    fired = count > 0
    for p in range(1, 101):
        target = count * p / 100.0
        b = (cum < target[:, None]).sum(axis=1).clip(0, hist.shape[1] - 1)
        before = np.where(b > 0, np.take_along_axis(cum, (b - 1).clip(0)[:, None], 1)[:, 0], 0)
        inside = np.take_along_axis(hist, b[:, None], 1)[:, 0]
        frac = np.where(inside > 0, (target - before) / np.maximum(inside, 1), 1.0).clip(0, 1)
        low = np.clip(lower[b], lo_all, hi_all)
        high = np.clip(upper[b], lo_all, hi_all)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = np.where(low > 0, low * (high / np.where(low > 0, low, 1)) ** frac, high)
        out[:, p - 1] = np.where(fired, value, 0.0)
    out[:, 99] = np.where(fired, hi_all, 0.0)
    return out


def viewer_histogram(stats: BlockStats, config: StatsConfig, bins: int = VIEWER_BINS
                     ) -> np.ndarray:
    """``[F, bins]`` counts over equal-width bins of ``[act_min, act_max]``."""
    centers = HistogramBins(config).centers()
    hist = stats.hist.numpy()
    lo = stats.min_active.numpy().astype(np.float64)[:, None]
    hi = stats.max.numpy().astype(np.float64)[:, None]
    value = np.clip(centers[None, :], lo, hi)
    span = np.where(hi > lo, hi - lo, 1.0)
    target = np.clip(np.floor((value - lo) / span * bins), 0, bins - 1).astype(np.int64)
    out = np.zeros((hist.shape[0], bins), dtype=np.float64)
    np.add.at(out, (np.repeat(np.arange(hist.shape[0]), hist.shape[1]), target.ravel()),
              hist.ravel())
    return out


def coactive(top: ExampleSet, feature: int, limit: int) -> list[tuple[int, int]]:
    """The block's features most often among the strongest at ``feature``'s top examples."""
    valid = top.gidx[feature] != EMPTY
    ids = top.partners[feature][valid].flatten().tolist()
    counts = Counter(i for i in ids if i not in (EMPTY, feature))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


# --- records ------------------------------------------------------------------------------------
def _examples(examples: dict[str, np.ndarray], feature: int, text, config: StatsConfig,
              by_value: bool = False) -> list[dict]:
    """The viewer's ``Example`` dicts of one feature (``examples``: an ExampleSet as numpy
    arrays): as stored, or by activation (highest first, then corpus order). Activations are
    rounded to 4 decimals: display values, a third of the JSON (the tables keep them exact)."""
    gidx = examples["gidx"][feature]
    rows = [i for i in range(len(gidx)) if gidx[i] != EMPTY]
    if by_value:
        values = examples["value"][feature]
        rows.sort(key=lambda i: (-values[i], gidx[i]))
    seen: set[tuple[int, ...]] = set()
    out = []
    for i in rows:
        tokens = examples["tokens"][feature, i]
        keep = tokens != EMPTY
        window = tuple(tokens[keep].tolist())
        out.append({"tokens": [text(t) for t in window],
                    "tokens_acts_list": np.round(examples["acts"][feature, i][keep], 4
                                                 ).astype(np.float64).tolist(),
                    "train_token_ind": int(keep[:config.before].sum()),
                    "is_repeated_datapoint": window in seen})
        seen.add(window)
    return out


def viewer_records(stats: BlockStats, config: StatsConfig, *, transcoder_id: str, text,
                   logits) -> Iterator[dict]:
    """The viewer's per-feature JSON records of one block, in feature order (a generator)."""
    quantiles = quantile_values(stats, config)
    histogram = viewer_histogram(stats, config)
    top_ids, _, bottom_ids, _ = logits
    n_tokens = max(int(stats.n_tokens), 1)
    top, sample = (part.tensors() for part in (stats.top, stats.sample))
    top = {name: t.numpy() for name, t in top.items()}
    sample = {name: t.numpy() for name, t in sample.items()}
    counts, act_min, act_max = (stats.count.tolist(), stats.min_active.tolist(),
                                stats.max.tolist())
    for f in range(stats.width):
        fired = counts[f] > 0
        groups = _split(_examples(sample, f, text, config, by_value=True),
                        QUANTILE_GROUPS)
        yield {
            "transcoder_id": transcoder_id,
            "index": f,
            "examples_quantiles": [
                {"quantile_name": "Top activations",
                 "examples": _examples(top, f, text, config)},
                *({"quantile_name": f"Subsample Interval {i}", "examples": group}
                  for i, group in enumerate(groups) if group)],
            "top_logits": [text(t) for t in top_ids[f].tolist()],
            "bottom_logits": [text(t) for t in bottom_ids[f].tolist()],
            "act_min": act_min[f] if fired else 0.0,
            "act_max": act_max[f],
            "quantile_values": quantiles[f].tolist(),
            "histogram": histogram[f].tolist(),
            "activation_frequency": counts[f] / n_tokens,
            # Not in the viewer's schema (it ignores extra fields): the Explorer's feature page.
            "coactive": [{"feature": p, "count": c}
                         for p, c in coactive(stats.top, f, config.partners)],
        }


def _split(items: list, parts: int) -> list[list]:
    """``items`` cut into ``parts`` consecutive groups of sizes differing by at most one."""
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)]
    return [items[a:b] for a, b in zip(bounds, bounds[1:])]


# --- Parquet ------------------------------------------------------------------------------------
def block_table(name: str, stats: BlockStats, config: StatsConfig, *, dictionary: str,
                text, logits, ctx_len: int):
    """One row per feature of one block, as a pyarrow Table."""
    import pyarrow as pa
    kind, layer = name.split("/")
    width = stats.width
    count = stats.count.numpy()
    n_tokens = int(stats.n_tokens)
    sums, sum_sq = stats.sum.numpy(), stats.sum_sq.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_active = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
        var = np.where(count > 0, sum_sq / np.maximum(count, 1) - mean_active ** 2, np.nan)
    top_ids, top_vals, bottom_ids, bottom_vals = logits
    columns = {
        "dictionary": pa.array([dictionary] * width),
        "kind": pa.array([kind] * width),
        "layer": pa.array(np.full(width, int(layer), dtype=np.int32)),
        "feature": pa.array(np.arange(width, dtype=np.int32)),
        "n_tokens": pa.array(np.full(width, n_tokens, dtype=np.int64)),
        "count": pa.array(count),
        "frequency": pa.array(count / max(n_tokens, 1)),
        "mean": pa.array(sums / max(n_tokens, 1)),
        # null, not NaN, for a feature that never fired (NaN != NaN breaks comparisons)
        "mean_active": pa.array(mean_active, mask=count == 0),
        "std_active": pa.array(np.sqrt(np.clip(var, 0, None)), mask=count == 0),
        "max": pa.array(stats.max.numpy()),
        "min_active": pa.array(stats.min_active.numpy(), mask=count == 0),
        "quantiles": _fixed_list(quantile_values(stats, config).astype(np.float32)),
        "histogram": _fixed_list(stats.hist.numpy()),
        "top_logits": _string_lists(top_ids, text),
        "top_logit_values": _fixed_list(top_vals.astype(np.float32)),
        "bottom_logits": _string_lists(bottom_ids, text),
        "bottom_logit_values": _fixed_list(bottom_vals.astype(np.float32)),
        "top_examples": _example_lists(stats.top, ctx_len),
        "sample_examples": _example_lists(stats.sample, ctx_len),
        "coactive": pa.array([[{"feature": p, "count": c}
                               for p, c in coactive(stats.top, f, config.partners)]
                              for f in range(width)],
                             type=pa.list_(pa.struct([("feature", pa.int32()),
                                                      ("count", pa.int32())]))),
    }
    return pa.table(columns)


def _fixed_list(values: np.ndarray):
    import pyarrow as pa
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def _string_lists(ids: np.ndarray, text):
    import pyarrow as pa
    return pa.array([[text(t) for t in row] for row in ids], type=pa.list_(pa.string()))


def _example_lists(examples: ExampleSet, ctx_len: int):
    """list<struct<value, context, position, tokens, acts>> per feature, best first, empty slots
    left out. Window tokens outside the context are -1 (their acts 0)."""
    import pyarrow as pa
    gidx = examples.gidx.numpy()
    valid = gidx != EMPTY
    window = examples.tokens.shape[2]
    flat_g = gidx[valid]
    entries = pa.StructArray.from_arrays(
        [pa.array(examples.value.numpy()[valid]),
         pa.array(flat_g // ctx_len), pa.array((flat_g % ctx_len).astype(np.int32)),
         pa.FixedSizeListArray.from_arrays(pa.array(examples.tokens.numpy()[valid].ravel()),
                                           window),
         pa.FixedSizeListArray.from_arrays(pa.array(examples.acts.numpy()[valid].ravel()),
                                           window)],
        names=["value", "context", "position", "tokens", "acts"])
    offsets = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), entries)


def write_parquet(path: Path, tables, metadata: dict) -> None:
    """Write the tables (one per block, same schema) as one Parquet file, atomically."""
    import json

    import pyarrow.parquet as pq

    from qwen_interp.atomic import replace_file

    def write(tmp: Path) -> None:
        writer = None
        try:
            for table in tables:
                if writer is None:
                    schema = table.schema.with_metadata({"qwen_interp": json.dumps(metadata)})
                    writer = pq.ParquetWriter(str(tmp), schema)
                writer.write_table(table.replace_schema_metadata(schema.metadata))
        finally:
            if writer is not None:
                writer.close()
    replace_file(path, write)
