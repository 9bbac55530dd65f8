"""One model in memory, three tools, one forward pass.

A :class:`Session` loads a Qwen3 model once as a single TransformerLens object that is at the same
time circuit-tracer's ``TransformerLensReplacementModel`` (with a CLT attached) and SAELens's
``HookedSAETransformer``: every tool runs on the same parameters, on one device.

    session = Session.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelightai/clt-qwen3-1.7b-base-20k")
    session.add_sae(SAE.from_pretrained("qwen-scope-3-1.7b-base-w32k-l50", "layer12"))
    out = session.run("Fact: The president of the United States in 2010 was")
    out.logits, out.clt_features, out.sae_features[12]          # one forward pass

    with session.steer({12: {1234: 8.0}}):                         # Qwen-Scope convention
        graph = session.attribute(prompt)                          # describes the steered model
        logits, acts = session.model.feature_intervention(prompt, [(3, 5, 77, 0.0)])

Hooks live only inside ``run``/``steer``; TransformerLens removes them on exit, also after an
exception.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

RESID_POST = "resid_post"


@functools.cache
def shared_model_class(with_clt: bool) -> type[Any]:
    """The one model class: circuit-tracer's TL replacement model *and* SAELens's
    HookedSAETransformer (both subclass HookedTransformer), or the latter alone without a CLT."""
    from sae_lens import HookedSAETransformer
    if not with_clt:
        return HookedSAETransformer
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel)
    return type("SharedReplacementModel", (TransformerLensReplacementModel, HookedSAETransformer),
                {"__module__": __name__})


@dataclass
class SessionOutput:
    tokens: torch.Tensor  # (batch, pos)
    logits: torch.Tensor | None  # (batch, pos, d_vocab); None when not asked for
    clt_features: torch.Tensor | None  # (n_layers, batch, pos, d_latent); position 0 zeroed
    sae_features: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (b, pos, d_sae)


class Session:
    def __init__(self, model) -> None:
        self.model = model
        self.saes: dict[int, Any] = {}  # layer -> SAELens SAE at that layer's resid_post

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_name: str, transcoder: str | None = None, *,
                        device: str | torch.device | None = None, dtype=torch.float32,
                        lazy_decoder: bool = True, **kwargs) -> Session:
        """Load ``model_name`` once; attach the CLT ``transcoder`` (repo id, alias or folder) if
        given. Weights are processed as circuit-tracer does (no folding or centring), so every
        hook value equals HF transformers'."""
        import qwen_interp  # noqa: F401 - adapters: model names, CLT formats, SAE releases
        from qwen_interp.inputs import torch_dtype
        dtype = torch_dtype(dtype)  # a string would fail only after the CLT was loaded
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        processing = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
        if transcoder is None:
            model = shared_model_class(False).from_pretrained(
                model_name, device=device, dtype=dtype, **processing, **kwargs)
            return cls(model)
        from circuit_tracer.utils import hf_utils
        from qwen_interp.fit import paired_with
        from qwen_interp_circuit_tracer import preflight
        preflight(model_name, transcoder)  # model exists and fits a registered CLT
        with paired_with(model_name):  # CLT width and hooks checked against this model
            transcoders, _ = hf_utils.load_transcoder_from_hub(
                transcoder, device=device, dtype=dtype, lazy_decoder=lazy_decoder)
        model = shared_model_class(True).from_pretrained_and_transcoders(
            model_name, transcoders, device=device, dtype=dtype, **kwargs)
        return cls(model)

    @property
    def has_clt(self) -> bool:
        return hasattr(self.model, "transcoders")

    def add_sae(self, sae) -> None:
        """Attach a SAELens SAE that reads a layer's residual output (Qwen-Scope's hook point)."""
        from qwen_interp.fit import check_sae_fits_model
        check_sae_fits_model(sae, self.model)
        layer = _layer_of(sae.cfg.metadata.hook_name)
        self.saes[layer] = sae.to(self.model.cfg.device)

    def add_saes(self, release: str, layers: Iterable[int]) -> None:
        from sae_lens import SAE
        for layer in layers:
            self.add_sae(SAE.from_pretrained(release, f"layer{layer}",
                                             device=str(self.model.cfg.device)))

    # --- one pass -----------------------------------------------------------------------------
    def tokens(self, inputs) -> torch.Tensor:
        """(batch, pos) token ids. Strings follow circuit-tracer's convention when a CLT is
        attached (``<|endoftext|>`` first, its features zeroed) so positions match its graphs.
        Bytes, lone surrogates, empty inputs and inputs longer than n_ctx raise InputError."""
        from qwen_interp.inputs import check_length, check_prompt
        check_prompt(inputs, "Session input")
        if isinstance(inputs, str):
            if self.has_clt:
                tokens = self.model.ensure_tokenized(inputs).unsqueeze(0)
            else:  # truncate=False: TransformerLens would cut to n_ctx without a word
                tokens = self.model.to_tokens(inputs, prepend_bos=False, truncate=False)
        else:
            tokens = torch.as_tensor(inputs, device=self.model.cfg.device)
            tokens = tokens.unsqueeze(0) if tokens.ndim == 1 else tokens
        check_length(tokens.shape[-1], self.model.cfg.n_ctx, "Session input")
        return tokens

    @torch.no_grad()  # not inference_mode: returned tensors must be usable in autograd later
    def run(self, inputs, *, logits: bool = True, clt: bool | Iterable[int] = True,
            saes: bool | Iterable[int] = True, sparse: bool = False) -> SessionOutput:
        """One forward pass returning what was asked for and nothing else: logits, CLT features
        (all layers, or the listed ones), SAE features of the listed attached layers. Without
        logits the pass stops after the last layer it needs."""
        tokens = self.tokens(inputs)
        n_layers = self.model.cfg.n_layers
        clt_layers = _select(clt, range(n_layers) if self.has_clt else ())
        sae_layers = _select(saes, sorted(self.saes))
        missing = [layer for layer in sae_layers if layer not in self.saes]
        if missing:
            raise KeyError(f"no SAE attached at layers {missing}; attached: {sorted(self.saes)}")
        if clt_layers and not self.has_clt:
            raise ValueError("this session has no CLT attached")

        clt_out: dict[int, torch.Tensor] = {}
        sae_out: dict[int, torch.Tensor] = {}
        hooks = []
        for layer in clt_layers:
            hooks.append((f"blocks.{layer}.{self.model.feature_input_hook}",
                          functools.partial(self._encode_clt, layer=layer, out=clt_out,
                                            sparse=sparse)))
        for layer in sae_layers:
            hooks.append((self.saes[layer].cfg.metadata.hook_name,
                          functools.partial(self._encode_sae, sae=self.saes[layer],
                                            out=sae_out, layer=layer, sparse=sparse)))
        stop = None if logits else max([*clt_layers, *sae_layers], default=-1) + 1
        with self.model.hooks(fwd_hooks=hooks):
            result = (self.model(tokens, stop_at_layer=stop) if stop is not None
                      else self.model(tokens))
        clt_features = None
        if clt_layers:
            stacked = [clt_out[layer] for layer in clt_layers]
            clt_features = torch.stack(stacked) if not sparse else torch.stack(stacked).coalesce()
        return SessionOutput(tokens=tokens, logits=result if logits else None,
                             clt_features=clt_features, sae_features=sae_out)

    def _encode_clt(self, acts, hook, layer, out, sparse):
        features = self.model.transcoders.encode_layer(acts, layer).detach()
        features[:, self.model.zero_positions] = 0  # circuit-tracer's first-position rule
        out[layer] = features.to_sparse() if sparse else features

    @staticmethod
    def _encode_sae(acts, hook, sae, out, layer, sparse):
        features = sae.encode(acts.to(sae.dtype)).detach()
        out[layer] = features.to_sparse() if sparse else features

    # --- steering and attribution ------------------------------------------------------------
    @contextlib.contextmanager
    def steer(self, add: Mapping[int, Mapping[int, float]] | None = None,
              clamp: Mapping[int, Mapping[int, float]] | None = None):
        """SAE steering while the context is open, in every pass of every tool on this model:
        ``add={layer: {feature: strength}}`` adds ``strength * W_dec[:, feature]`` at the layer
        output (Qwen-Scope's convention); ``clamp={layer: {feature: value}}`` sets a feature's
        activation to ``value`` keeping the SAE error. Composes with circuit-tracer's
        ``feature_intervention`` and ``attribute`` (they run inside the steered model)."""
        from qwen_interp_saelens import steering
        with contextlib.ExitStack() as stack:
            for layer, feats in (add or {}).items():
                stack.enter_context(steering.steer(self.model, self._sae(layer), dict(feats)))
            for layer, feats in (clamp or {}).items():
                stack.enter_context(steering.clamp(self.model, self._sae(layer), dict(feats)))
            yield self

    def attribute(self, prompt, **kwargs):
        """circuit-tracer's ``attribute`` on this session's model (steered, inside ``steer``)."""
        from circuit_tracer import attribute
        if not self.has_clt:
            raise ValueError("attribution needs a CLT: Session.from_pretrained(model, transcoder)")
        return attribute(prompt, self.model, **kwargs)

    def _sae(self, layer: int):
        try:
            return self.saes[layer]
        except KeyError:
            raise KeyError(f"no SAE attached at layer {layer}; attached: "
                           f"{sorted(self.saes)}") from None


def _select(choice, default) -> list[int]:
    if choice is True:
        return list(default)
    if choice is False or choice is None:
        return []
    return sorted(int(x) for x in choice)


def _layer_of(hook_name: str) -> int:
    parts = hook_name.split(".")
    if (len(parts) < 3 or parts[0] != "blocks" or not parts[1].isdigit()
            or parts[2] != "hook_resid_post"):
        raise ValueError(f"SAE hook {hook_name!r}: a session attaches SAEs at "
                         "blocks.{n}.hook_resid_post (Qwen-Scope's hook point)")
    return int(parts[1])
