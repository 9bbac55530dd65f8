"""Top-k cross-layer transcoders in circuit-tracer, and the loader for circuit-tracer-layout
folders (upstream ``load_clt`` knows only ReLU and JumpReLU).

The two top-k activations of BluelightAI's CLTs, as BluelightAI's reference loader computes them
(inference-clt, https://github.com/BlueLightAI/inference-clt, MIT,
``src/inference_clt/inference_clt.py``, ``InferenceCLT._apply_activation``), on the layer-first
pre-activations ``(n_layers, tokens, d_latent)`` its ``encode`` receives:

- ``topk``: ``relu(pre).topk(k, dim=-1)``: top k over d_latent, per layer and token.
- ``topk_all``: ``relu(pre).flatten(-2, -1).topk(k)``: the flattened dimensions are tokens and
  d_latent, so it is the top k per *layer* over all tokens x features of one ``encode`` call
  (not over the layers of one token, as the name might suggest).

How circuit-tracer's calls map onto "the tokens of one call": the tokens are the positions of the
one prompt the transcoder is given, i.e. the last two dimensions of every tensor circuit-tracer
passes are (positions, d_latent) and the top k is taken per leading index (per layer in
``encode``; per layer in ``encode_sparse``, which ``attribute`` uses; per prompt of the batch in
``encode_layer``, which ``get_activations`` and ``feature_intervention`` use). Position 0 (the
special token circuit-tracer prepends) takes part in the selection like every position the
transcoder is given, and circuit-tracer zeroes its features afterwards, in every API alike.
During ``feature_intervention_generate`` with a KV cache each step encodes only its new token,
so its top k is over that token's features, as the reference's ``generate_with_activations``
encodes each decoding step on its own. If a call has fewer than k features in all, all are kept
(the reference's ``topk`` would raise).

Given the active set, a top-k feature is linear in its pre-activation exactly like a JumpReLU
feature, so circuit-tracer's attribution is exact for both variants, and every circuit-tracer
path uses the activation through ``activation_function`` / ``apply_activation_function``.

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
    """Keep the k largest values of relu(x) over its last ``dims`` dimensions (per index of the
    others), zero the rest. ``dims=1``: BluelightAI's ``topk``; ``dims=2``: its ``topk_all``."""

    def __init__(self, k: int, dims: int = 1) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, not {dims!r}")
        self.k, self.dims = k, dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        flat = x.flatten(-2, -1) if self.dims == 2 and x.ndim >= 2 else x
        k = min(self.k, flat.shape[-1])
        values, idx = flat.topk(k, dim=-1)
        return torch.zeros_like(flat).scatter(-1, idx, values).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"k={self.k}, dims={self.dims}"


class TopKCrossLayerTranscoder(CrossLayerTranscoder):
    """A CrossLayerTranscoder whose activation is BluelightAI's ``topk`` (``scope="token"``) or
    ``topk_all`` (``scope="tokens"``: per layer, over all positions of the prompt)."""

    def __init__(self, *args, k: int, scope: str = "token", **kwargs) -> None:
        super().__init__(*args, activation_function="relu", **kwargs)
        if scope not in ("token", "tokens"):
            raise ValueError(f"scope must be 'token' or 'tokens', not {scope!r}")
        self.k, self.scope = int(k), scope
        self.activation_function = TopKReLU(self.k, dims=1 if scope == "token" else 2)

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
            scope="tokens" if activation == "topk_all" else "token",
            lazy_decoder=lazy_decoder, lazy_encoder=lazy_encoder,
            feature_input_hook=feature_input_hook, feature_output_hook=feature_output_hook,
            scan=scan, dtype=dtype, clt_path=str(folder))
    clt.load_state_dict(state, assign=True)
    return clt
