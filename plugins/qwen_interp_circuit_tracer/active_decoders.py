"""Memory-bounded attribution scores for cross-layer transcoders.

circuit-tracer 0.5 keeps one scaled decoder row per (active feature occurrence, output layer)
(``decoder_vecs``: 4 KB x 406 rows per token of context at Qwen3-1.7B size, 133 GB for 1,000
tokens), and each backward hook gathers ``grads[:, positions]`` into a (batch, occurrences,
d_model) tensor before a batched dot product: about 50 GB at the last layer for the 15-token seed
prompt at batch 256, which is where attribution's peak goes.

Here each (source layer, feature) decoder row is read once (``ActiveDecoders``), occurrences are
scaled when scored, and scores are computed position by position as one batched matmul over a
padded (positions, occurrences, d_model) block whose size is bounded by ``workspace_bytes``. The
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
    offsets: list[int]  # offsets[p]: first occurrence at position >= p (length n_pos + 1)
    width: int  # most occurrences at one position
    slots: torch.Tensor  # (n,) position * width + rank within its position

    def scaled_rows(self, lo: int, hi: int, out_layer: int) -> torch.Tensor:
        """activation * decoder row for occurrences lo:hi, written to ``out_layer``."""
        rows = self.rows[:, out_layer - self.layer]
        return rows[self.inverse[lo:hi]] * self.values[lo:hi, None]


class ActiveDecoders:
    """Decoder rows of the active features of a CLT, each (source layer, feature) read once."""

    def __init__(self, sources: list[SourceLayer], n_layers: int, n_pos: int, d_model: int,
                 workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> None:
        self.sources = sources
        self.n_layers, self.n_pos, self.d_model = n_layers, n_pos, d_model
        self.workspace_bytes = int(workspace_bytes)

    @classmethod
    def from_transcoder(cls, transcoder, features: torch.Tensor,
                        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES) -> "ActiveDecoders":
        """``features``: the coalesced sparse (n_layers, n_pos, d_transcoder) activation matrix of
        ``CrossLayerTranscoder.encode_sparse``."""
        layer_idx, pos_idx, feat_idx = features.indices()
        values = features.values()
        n_layers, n_pos, _ = features.shape
        counts = torch.bincount(layer_idx, minlength=n_layers).tolist()
        sources, start = [], 0
        for layer, count in enumerate(counts):
            if count == 0:
                continue
            span = slice(start, start + count)
            unique, inverse = feat_idx[span].unique(return_inverse=True)
            rows = transcoder._get_decoder_vectors(layer, unique.cpu())
            positions = pos_idx[span]
            per_pos = torch.bincount(positions, minlength=n_pos)
            first = torch.cumsum(per_pos, 0) - per_pos
            rank = torch.arange(count, device=positions.device) - first[positions]
            width = int(per_pos.max())
            sources.append(SourceLayer(
                layer=layer, rows=rows, inverse=inverse, values=values[span],
                positions=positions,
                node_ids=torch.arange(start, start + count, device=positions.device),
                offsets=[0] + torch.cumsum(per_pos, 0).tolist(), width=width,
                slots=positions * width + rank))
            start += count
        return cls(sources, n_layers, n_pos, transcoder.d_model, workspace_bytes)

    def occurrence_rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """circuit-tracer's per-occurrence layout, materialized (for inspection, not for
        attribution): ``(decoder_locations, decoder_vecs, encoder_to_decoder_map)``."""
        locations, vecs, node_ids = [], [], []
        for src in self.sources:
            n_out = self.n_layers - src.layer
            out_layers = torch.arange(src.layer, self.n_layers, device=src.positions.device)
            vecs.append((src.rows[src.inverse] * src.values[:, None, None]).reshape(-1, self.d_model))
            locations.append(torch.stack((out_layers.repeat(len(src.values)),
                                          src.positions.repeat_interleave(n_out))))
            node_ids.append(src.node_ids.repeat_interleave(n_out))
        return torch.cat(locations, 1), torch.cat(vecs), torch.cat(node_ids)

    def reconstruction(self, b_dec: torch.Tensor, W_skip: torch.Tensor | None = None,
                       input_acts: torch.Tensor | None = None) -> torch.Tensor:
        """(n_layers, n_pos, d_model) CLT output: the same ``index_add_`` as circuit-tracer's
        ``compute_reconstruction``, in the same order, in bounded chunks."""
        dtype = self.sources[0].rows.dtype if self.sources else b_dec.dtype
        recon = torch.zeros(self.n_layers * self.n_pos, self.d_model, device=b_dec.device,
                            dtype=dtype)
        for src in self.sources:
            n_out = self.n_layers - src.layer
            out_layers = torch.arange(src.layer, self.n_layers, device=recon.device)
            per_row = n_out * self.d_model * recon.element_size()
            step = max(1, self.workspace_bytes // per_row)
            for lo in range(0, len(src.values), step):
                hi = min(lo + step, len(src.values))
                vecs = src.rows[src.inverse[lo:hi]] * src.values[lo:hi, None, None]
                flat = (out_layers[None, :] * self.n_pos + src.positions[lo:hi, None]).reshape(-1)
                recon.index_add_(0, flat, vecs.reshape(-1, self.d_model))
        recon = recon.reshape(self.n_layers, self.n_pos, self.d_model) + b_dec[:, None]
        if W_skip is not None:
            if input_acts is None:
                raise ValueError("Transcoder has skip connection but no input_acts were provided")
            recon = recon + input_acts @ W_skip
        return recon

    def score_into(self, buffer: torch.Tensor, grads: torch.Tensor, out_layer: int) -> None:
        """buffer[node] += <grads[:, position(node)], activation * decoder row(node -> out_layer)>
        for every occurrence that writes to ``out_layer``. buffer: (rows, batch);
        grads: (batch, n_pos, d_model)."""
        if not self.sources:
            return
        batch = grads.shape[0]
        g = grads.to(self.sources[0].rows.dtype)
        for src in self.sources:
            if src.layer > out_layer:
                break
            elem = src.rows.element_size()
            per_pos = src.width * (self.d_model + batch) * elem
            step = max(1, self.workspace_bytes // per_pos)
            for p0 in range(0, self.n_pos, step):
                p1 = min(p0 + step, self.n_pos)
                lo, hi = src.offsets[p0], src.offsets[p1]
                if lo == hi:
                    continue
                slots = src.slots[lo:hi] - p0 * src.width
                padded = g.new_zeros((p1 - p0) * src.width, self.d_model)
                padded.index_copy_(0, slots, src.scaled_rows(lo, hi, out_layer))
                scores = torch.bmm(padded.view(p1 - p0, src.width, self.d_model),
                                   g[:, p0:p1].permute(1, 2, 0))  # (positions, width, batch)
                buffer.index_add_(0, src.node_ids[lo:hi],
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
    """``CrossLayerTranscoder.compute_attribution_components`` with ``ActiveDecoders`` as
    ``decoder_vecs``. ``decoder_locations`` and ``encoder_to_decoder_map`` are empty (there are
    no occurrence-level rows), so the generic per-row feature hooks find nothing to do.
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
