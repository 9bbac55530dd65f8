"""Top-k cross-layer transcoders in circuit-tracer, and the loader for circuit-tracer-layout
folders (upstream ``load_clt`` knows only ReLU and JumpReLU).

Attribution needs three things from a transcoder: the active features with their values
(``encode_sparse``), their encoder rows (the direction a feature reads) and decoder rows. Given
the active set, a top-k feature is linear in its pre-activation exactly like a JumpReLU feature,
so circuit-tracer's attribution is exact for both variants once ``encode_sparse`` selects the
right set:

- ``topk``: top k of ``relu(pre)`` per layer and position. It is a per-layer activation
  function, so every circuit-tracer path works (``encode``, ``encode_layer``, ``encode_sparse``,
  ``get_activations``, ``feature_intervention``).
- ``topk_all``: top k of ``relu(pre)`` across all layers of a position. ``encode`` and
  ``encode_sparse`` (used by ``attribute``) see all layers and are exact. A per-layer call
  (``encode_layer``: ``get_activations``, ``feature_intervention``) cannot know the later layers
  and raises instead of returning a wrong answer.

Self-contained (torch and circuit-tracer only): qwen-interp's upstream patch "topk-activation"
copies this module into circuit-tracer as
``circuit_tracer/transcoder/topk_cross_layer_transcoder.py``.
"""

from __future__ import annotations

import torch
from circuit_tracer.transcoder.cross_layer_transcoder import (CrossLayerTranscoder,
                                                               _load_state_dict)
from circuit_tracer.utils import get_default_device


class TopKReLU(torch.nn.Module):
    """Keep the k largest values of relu(x) along the last dimension, zero the rest."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        k = min(self.k, x.shape[-1])
        idx = torch.topk(x, k, dim=-1).indices
        return torch.zeros_like(x).scatter_(-1, idx, x.gather(-1, idx))

    def extra_repr(self) -> str:
        return f"k={self.k}"


def topk_across_layers(pre: torch.Tensor, k: int) -> torch.Tensor:
    """pre: (n_layers, n_pos, d_latent) -> top k of relu(pre) over layers x features per position."""
    n_layers, n_pos, d_latent = pre.shape
    flat = torch.relu(pre).permute(1, 0, 2).reshape(n_pos, n_layers * d_latent)
    kept = TopKReLU(k)(flat)
    return kept.reshape(n_pos, n_layers, d_latent).permute(1, 0, 2)


class TopKCrossLayerTranscoder(CrossLayerTranscoder):
    """A CrossLayerTranscoder whose activation is top-k, per layer or across layers."""

    def __init__(self, *args, k: int, scope: str = "layer", **kwargs) -> None:
        super().__init__(*args, activation_function="relu", **kwargs)
        if scope not in ("layer", "all"):
            raise ValueError(f"scope must be 'layer' or 'all', not {scope!r}")
        self.k, self.scope = int(k), scope
        self.activation_function = TopKReLU(self.k)

    def encode(self, x):
        if self.scope == "layer":
            return super().encode(x)
        W_enc = self._get_encoder_weights()
        pre = torch.einsum("lbd,lfd->lbf", x, W_enc) + self.b_enc[:, None]
        return topk_across_layers(pre, self.k)

    def apply_activation_function(self, layer_id, features):
        if self.scope == "layer":
            return super().apply_activation_function(layer_id, features)
        raise NotImplementedError(
            "topk_all selects the top k across all layers of a position, so one layer alone "
            "cannot be encoded: use attribute() or encode(x) with every layer's input. "
            "get_activations/feature_intervention are not defined for topk_all CLTs.")

    def encode_sparse(self, x, zero_positions: slice = slice(0, 1)):
        if self.scope == "layer":
            return super().encode_sparse(x, zero_positions=zero_positions)
        # One (n_layers, n_pos, d_latent) dense block: small (28 x 15 x 20480 fp32 = 34 MB).
        pre = torch.stack([
            torch.einsum("bd,fd->bf", x[layer], self._get_encoder_weights(layer)) + self.b_enc[layer]
            for layer in range(self.n_layers)])
        feats = topk_across_layers(pre, self.k)
        feats[:, zero_positions] = 0
        sparse = feats.to_sparse().coalesce()
        layer_idx, _, feat_idx = sparse.indices()
        encoders = torch.cat([self._get_encoder_weights(layer)[feat_idx[layer_idx == layer]]
                              for layer in range(self.n_layers)])
        return sparse, encoders

    def extra_repr(self) -> str:
        return f"k={self.k}, scope={self.scope!r}"


ACTIVATIONS = ("relu", "jump_relu", "topk", "topk_all")


def load_ct_layout(folder, activation: str | None = None, k: int | None = None,
                   feature_input_hook: str = "mlp.hook_in",
                   feature_output_hook: str = "mlp.hook_out", scan=None, device=None,
                   dtype: torch.dtype = torch.bfloat16, lazy_decoder: bool = True,
                   lazy_encoder: bool = False) -> CrossLayerTranscoder:
    """Load a (validated) circuit-tracer-layout folder into one CrossLayerTranscoder.

    ReLU / JumpReLU go through upstream ``load_clt`` unchanged; top-k uses the same upstream
    state-dict reader and the subclass above. Either way tensors are read once, straight into
    their final buffers (no second copy), and the decoder stays on disk when lazy.
    """
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    if activation in (None, "relu", "jump_relu", "jumprelu"):
        return load_clt(str(folder), feature_input_hook=feature_input_hook,
                        feature_output_hook=feature_output_hook, scan=scan, device=device,
                        dtype=dtype, lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder)
    if activation not in ("topk", "topk_all") or not k or int(k) <= 0:
        raise ValueError(f"{folder}: unknown activation {activation!r} (k={k})")
    if device is None:
        device = get_default_device()
    state = _load_state_dict(str(folder), lazy_decoder, lazy_encoder, device, dtype)
    n_layers, d_model = state["b_dec"].shape
    with torch.device("meta"):
        clt = TopKCrossLayerTranscoder(
            n_layers, state["b_enc"].shape[1], d_model, k=int(k),
            scope="all" if activation == "topk_all" else "layer",
            lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder,
            feature_input_hook=feature_input_hook, feature_output_hook=feature_output_hook,
            scan=scan, dtype=dtype, clt_path=str(folder))
    clt.load_state_dict(state, assign=True)
    return clt
