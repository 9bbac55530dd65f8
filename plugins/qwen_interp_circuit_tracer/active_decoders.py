"""Memory-bounded attribution scores for cross-layer transcoders.

circuit-tracer 0.5 keeps one scaled decoder row per (active feature occurrence, output layer)
(``decoder_vecs``: 4 KB x 406 rows per token of context at Qwen3-1.7B size, 133 GB for 1,000
tokens), and each backward hook gathers ``grads[:, positions]`` into a (batch, occurrences,
d_model) tensor before a batched dot product: about 50 GB at the last layer for the 15-token seed
prompt at batch 256, which is where attribution's peak goes.

Here each (source layer, feature) decoder row is read once (``ActiveDecoders``), occurrences are
scaled when scored, and each output layer's scores (all source layers at once) are computed
position by position as one batched matmul over a padded (positions, occurrences, d_model) block
whose size is bounded by ``workspace_bytes``: a few kernels per output layer and block. The
per-occurrence products are the same elementwise products as upstream's (``row * activation`` in
the transcoder's dtype); only the summation order of each dot product may differ.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial

import torch

DEFAULT_WORKSPACE_BYTES = 256 * 2**20


@dataclass
class SourceLayer:
    """The active occurrences of one source layer, sorted by position (the order of a coalesced
    activation matrix, which is also circuit-tracer's node order)."""

    layer: int
    rows: torch.Tensor  # (unique features, output layers, d_model): decoder rows, read once
    inverse: torch.Tensor  # (n,) row of each occurrence
    values: torch.Tensor  # (n,) activation of each occurrence
    positions: torch.Tensor  # (n,) ascending
    node_ids: torch.Tensor  # (n,) row of each occurrence in the attribution buffer
    row_offset: int  # first row of ``rows`` in ActiveDecoders.flat_rows


@dataclass
class ScoringPlan:
    """Occurrences reordered by (position block, source layer, position): in each block, those
    that write to output layer ``l`` (source layer <= l) are a prefix, ``starts[b]:ends[b][l]``,
    so each output layer is scored with one batched matmul per block, not one per source layer."""

    step: int  # positions per block
    starts: list[int]
    ends: list[list[int]]
    first_row: torch.Tensor  # flat_rows index of the occurrence's row for output layer 0
    values: torch.Tensor
    node_ids: torch.Tensor
    local_pos: torch.Tensor  # position - first position of its block
    rank: torch.Tensor  # slot within its position (earlier source layers first)


class ActiveDecoders:
    """Decoder rows of the active features of a CLT, each (source layer, feature) read once."""

    def __init__(self, sources: list[SourceLayer], flat_rows: torch.Tensor | None, n_layers: int,
                 n_pos: int, d_model: int, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
        self.sources, self.flat_rows = sources, flat_rows
        self.n_layers, self.n_pos, self.d_model = n_layers, n_pos, d_model
        self.workspace_bytes = int(workspace_bytes)
        self._plans: dict[int, ScoringPlan] = {}
        if not sources:
            self.widths = [0] * n_layers
            return
        layer = torch.cat([torch.full_like(s.positions, s.layer) for s in sources])
        pos = torch.cat([s.positions for s in sources])
        # counts[s, p]: occurrences of source layer s at position p. An occurrence's slot at its
        # position is the same for every output layer: occurrences of earlier source layers there,
        # plus its rank within its own layer.
        cell = layer * n_pos + pos
        counts = torch.bincount(cell, minlength=n_layers * n_pos)
        first_in_cell = torch.cumsum(counts, 0) - counts
        counts = counts.view(n_layers, n_pos)
        below = torch.cumsum(counts, 0)  # below[l, p]: occurrences with source layer <= l at p
        self._layer, self._pos = layer, pos
        self._rank = (below - counts).view(-1)[cell] + (
            torch.arange(len(cell), device=cell.device) - first_in_cell[cell])
        self.widths = below.max(dim=1).values.tolist()  # padded width per output layer
        self._first_row = torch.cat([
            s.row_offset + s.inverse * (n_layers - s.layer) - s.layer for s in sources])
        self._values = torch.cat([s.values for s in sources])

    @classmethod
    def from_transcoder(cls, transcoder, features: torch.Tensor,
                        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> ActiveDecoders:
        """``features``: the coalesced sparse (n_layers, n_pos, d_transcoder) activation matrix of
        ``CrossLayerTranscoder.encode_sparse``."""
        layer_idx, pos_idx, feat_idx = features.indices()
        values = features.values()
        n_layers, n_pos, _ = features.shape
        d_model = transcoder.d_model
        counts = torch.bincount(layer_idx, minlength=n_layers).tolist()
        active, start = [], 0
        for layer, count in enumerate(counts):
            if count:
                unique, inverse = feat_idx[start:start + count].unique(return_inverse=True)
                active.append((layer, slice(start, start + count), unique, inverse))
            start += count
        # One buffer for every layer's rows, so one gather serves all source layers.
        n_rows = sum(len(unique) * (n_layers - layer) for layer, _, unique, _ in active)
        flat_rows, sources, offset = None, [], 0
        for layer, span, unique, inverse in active:
            rows = transcoder._get_decoder_vectors(layer, unique.cpu())
            if flat_rows is None:
                flat_rows = rows.new_empty((n_rows, d_model))
            size = rows.shape[0] * rows.shape[1]
            flat_rows[offset:offset + size] = rows.reshape(size, d_model)
            del rows
            sources.append(SourceLayer(
                layer=layer, rows=flat_rows[offset:offset + size].view(len(unique), -1, d_model),
                inverse=inverse, values=values[span], positions=pos_idx[span],
                node_ids=torch.arange(span.start, span.stop, device=pos_idx.device),
                row_offset=offset))
            offset += size
        return cls(sources, flat_rows, n_layers, n_pos, d_model, workspace_bytes)

    def _plan(self, step: int) -> ScoringPlan:
        """The scoring order for blocks of ``step`` positions (built once per block size)."""
        if step not in self._plans:
            n_blocks = -(-self.n_pos // step)
            block = self._pos // step
            key = block * self.n_layers + self._layer
            order = torch.argsort(key, stable=True)
            per_cell = torch.bincount(key, minlength=n_blocks * self.n_layers)
            ends = torch.cumsum(per_cell, 0).view(n_blocks, self.n_layers).tolist()
            self._plans[step] = ScoringPlan(
                step=step, starts=[0] + [row[-1] for row in ends[:-1]], ends=ends,
                first_row=self._first_row[order], values=self._values[order], node_ids=order,
                local_pos=(self._pos - block * step)[order], rank=self._rank[order])
        return self._plans[step]

    def occurrence_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """circuit-tracer's per-occurrence layout, materialized (for inspection, not for
        attribution): ``(decoder_locations, decoder_vecs, encoder_to_decoder_map)``."""
        locations, vecs, node_ids = [], [], []
        for src in self.sources:
            n_out = self.n_layers - src.layer
            out_layers = torch.arange(src.layer, self.n_layers, device=src.positions.device)
            vecs.append((src.rows[src.inverse] * src.values[:, None, None])
                        .reshape(-1, self.d_model))
            locations.append(torch.stack((out_layers.repeat(len(src.values)),
                                          src.positions.repeat_interleave(n_out))))
            node_ids.append(src.node_ids.repeat_interleave(n_out))
        return torch.cat(locations, 1), torch.cat(vecs), torch.cat(node_ids)

    def reconstruction(self, b_dec: torch.Tensor, W_skip: torch.Tensor | None = None,
                       input_acts: torch.Tensor | None = None) -> torch.Tensor:
        """(n_layers, n_pos, d_model) CLT output, bit for bit circuit-tracer's
        ``compute_reconstruction``, in bounded blocks of positions.

        Upstream adds every (occurrence, output layer) row with one ``index_add_``. How that call
        rounds is the kernel's business (in bf16 on CPU, PyTorch's scatter paths sum a row's
        contributions in bf16 or in fp32 depending on the row width), but each output row only
        depends on its own contributions and their order. So each block holds *every*
        contribution to its rows, in upstream's relative order (source layer, then feature), and
        is added with one ``index_add_`` into zeros, as upstream does."""
        d = self.d_model
        if not self.sources:
            recon = torch.zeros(self.n_layers * self.n_pos, d, device=b_dec.device,
                                dtype=b_dec.dtype)
        else:
            assert self.flat_rows is not None  # there are rows whenever there are sources
            dtype = torch.promote_types(self.flat_rows.dtype, self._values.dtype)
            recon = torch.zeros(self.n_layers * self.n_pos, d, device=self.flat_rows.device,
                                dtype=dtype)
            n_out = self.n_layers - self._layer  # output layers of each occurrence
            # Stable: occurrences at one position keep upstream's (source layer, feature) order.
            by_pos = torch.argsort(self._pos, stable=True)
            bounds = torch.searchsorted(self._pos[by_pos],
                                        torch.arange(self.n_pos + 1, device=self._pos.device))
            per_pos = torch.bincount(self._pos, weights=n_out.to(torch.float64),
                                     minlength=self.n_pos)
            rows_per_block = max(1, self.workspace_bytes // (d * recon.element_size()))
            p0 = 0
            while p0 < self.n_pos:
                p1, rows = p0 + 1, per_pos[p0].item()  # at least one position
                while p1 < self.n_pos and rows + per_pos[p1].item() <= rows_per_block:
                    rows += per_pos[p1].item()
                    p1 += 1
                occ = by_pos[bounds[p0]:bounds[p1]]
                if len(occ):
                    counts = n_out[occ]
                    rep = torch.repeat_interleave(occ, counts)
                    starts = torch.cumsum(counts, 0) - counts
                    out_layer = self._layer[rep] + (
                        torch.arange(len(rep), device=rep.device)
                        - torch.repeat_interleave(starts, counts))
                    vecs = (self.flat_rows[self._first_row[rep] + out_layer]
                            * self._values[rep, None])
                    block = torch.zeros(self.n_layers * (p1 - p0), d, device=recon.device,
                                        dtype=dtype)
                    block.index_add_(0, out_layer * (p1 - p0) + self._pos[rep] - p0, vecs)
                    recon.view(self.n_layers, self.n_pos, d)[:, p0:p1] = block.view(
                        self.n_layers, p1 - p0, d)
                    del vecs, block
                p0 = p1
        recon = recon.reshape(self.n_layers, self.n_pos, d) + b_dec[:, None]
        if W_skip is not None:
            if input_acts is None:
                raise ValueError("Transcoder has skip connection but no input_acts were provided")
            recon = recon + input_acts @ W_skip
        return recon

    def score_into(self, buffer: torch.Tensor, grads: torch.Tensor, out_layer: int) -> None:
        """buffer[node] += <grads[:, position(node)], activation * decoder row(node -> out_layer)>
        for every occurrence that writes to ``out_layer``. buffer: (rows, batch);
        grads: (batch, n_pos, d_model)."""
        width = self.widths[out_layer]
        if width == 0:
            return
        assert self.flat_rows is not None  # there are rows whenever there are sources
        batch, d = grads.shape[0], self.d_model
        g = grads.to(self.flat_rows.dtype)
        # per position: gathered rows and the padded block (width x d), scores (width x batch)
        per_pos = max(self.widths) * 2 * (d + batch) * self.flat_rows.element_size()
        plan = self._plan(max(1, self.workspace_bytes // per_pos))
        for b, (lo, ends) in enumerate(zip(plan.starts, plan.ends)):
            hi = ends[out_layer]
            if lo == hi:
                continue
            p0 = b * plan.step
            n = min(plan.step, self.n_pos - p0)
            rows = self.flat_rows[plan.first_row[lo:hi] + out_layer]
            rows *= plan.values[lo:hi, None]  # the product upstream stores, in the same dtype
            slots = torch.add(plan.rank[lo:hi], plan.local_pos[lo:hi], alpha=width)
            padded = g.new_zeros(n * width, d).index_copy_(0, slots, rows)
            scores = torch.bmm(padded.view(n, width, d), g[:, p0:p0 + n].permute(1, 2, 0))
            buffer.index_add_(0, plan.node_ids[lo:hi],
                              scores.view(-1, batch)[slots].to(buffer.dtype))


class ActiveEncoders:
    """``encoder_vecs`` as a lookup into the transcoder's resident encoder: row ``i`` is
    ``W_enc[layer_i, feature_i]`` of the i-th active occurrence, gathered when a batch asks for
    it (attribute() only indexes it), instead of a copy per occurrence (9 GB at 1,000 tokens)."""

    def __init__(self, W_enc: torch.Tensor, layers: torch.Tensor, features: torch.Tensor) -> None:
        self.W_enc, self.layers, self.features = W_enc, layers, features

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.layers), self.W_enc.shape[-1]))

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.to(self.layers.device)
        return self.W_enc[self.layers[index], self.features[index]]


def attribution_components(transcoder, inputs: torch.Tensor, zero_positions=slice(0, 1),
                           workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                           lookup_encoders: bool = False) -> dict:
    """attribute()'s variant of ``CrossLayerTranscoder.compute_attribution_components`` (which
    itself is left as it is): ``ActiveDecoders`` as ``decoder_vecs``, the same activation matrix
    and, bit for bit, the same reconstruction. ``decoder_locations`` and
    ``encoder_to_decoder_map`` are empty (there are no occurrence-level rows), so the generic
    per-row feature hooks find nothing to do.
    ``lookup_encoders`` (only when the transcoder stays in place during attribution):
    ``ActiveEncoders`` instead of a copy of each occurrence's encoder row."""
    features, encoder_vectors = transcoder.encode_sparse(inputs, zero_positions=zero_positions)
    if lookup_encoders and not transcoder.lazy_encoder:  # resident encoder: drop the copy
        layers, _, feats = features.indices()
        encoder_vectors = ActiveEncoders(transcoder.W_enc, layers, feats)
    decoders = ActiveDecoders.from_transcoder(transcoder, features, workspace_bytes)
    empty = torch.empty(2, 0, dtype=torch.long, device=transcoder.b_dec.device)
    return {
        "activation_matrix": features,
        "reconstruction": decoders.reconstruction(transcoder.b_dec, transcoder.W_skip, inputs),
        "encoder_vecs": encoder_vectors,
        "decoder_vecs": decoders,
        "encoder_to_decoder_map": empty[0],
        "decoder_locations": empty,
    }


def scoring_hooks(ctx, feature_output_hook: str) -> list:
    """TransformerLens backward hooks scoring ``ctx.decoder_vecs`` (ActiveDecoders) into
    ``ctx._batch_buffer``, one per output layer."""
    decoders, proxy = ctx.decoder_vecs, weakref.proxy(ctx)

    def score(grads: torch.Tensor, hook, *, layer: int) -> None:
        decoders.score_into(proxy._batch_buffer, grads, layer)

    return [(f"blocks.{layer}.{feature_output_hook}", partial(score, layer=layer))
            for layer in range(decoders.n_layers)]
