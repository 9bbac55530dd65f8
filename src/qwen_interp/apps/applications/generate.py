"""Generation on the shared session, steered or not, watching SAE features token by token.

- The prompt is tokenized as the document pass does (``docpass.tokenize``: circuit-tracer's first
  token, then the text without special tokens); the model continues it greedily
  (``temperature=0``) or by sampling (``torch.manual_seed(seed)`` first), with TransformerLens's
  ``generate``, inside :meth:`Session.steer` when interventions are given (Qwen-Scope's
  convention: ``h += s * W_dec[:, f]`` at the SAE layer's ``hook_resid_post``, every position).
  The continuation ends before the first special token (end of text) or after
  ``max_new_tokens``.
- Watched features (``sae/L:F``) are read by one more forward pass over prompt + continuation
  under the same interventions, at each generated token's position (the activation while that
  token is the input). They are read *before* the interventions at their own layer (the hook
  that reads is registered first, and TransformerLens runs a hook point's hooks in order): what
  the model computes there, given everything upstream - so a suppressed feature still shows
  whether its input is there, and it stops firing only when the model stops writing what it
  detects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .model import FeatureIndex

Interventions = Mapping[int, Mapping[int, float]]


@dataclass
class Generation:
    prompt: str
    continuation: str
    token_ids: list[int]  # generated tokens (the end-of-text token left out)
    tokens: list[str]  # each generated token decoded alone
    watched: dict[str, list[float]] = field(default_factory=dict)  # per generated token

    @property
    def text(self) -> str:
        return self.prompt + self.continuation


def sae_feature(index: FeatureIndex, name: str) -> tuple[int, int]:
    """``"sae/L:F"`` -> ``(L, F)``; CLT features cannot be steered or watched here."""
    kind, layer, feature = index.split(name)
    if kind != "sae":
        raise ValueError(f"feature {name!r}: only SAE features (sae/L:F) can be steered or "
                         "watched during generation")
    return layer, feature


def prompt_ids(session, prompt: str, model_name: str = "") -> list[int]:
    from qwen_interp.apps.features.collect import first_token_id
    from qwen_interp.inputs import check_prompt
    check_prompt(prompt, "prompt")
    tokenizer = session.model.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"prompt gives no tokens: {prompt[:40]!r}")
    return [first_token_id(tokenizer, model_name), *ids]


@torch.no_grad()
def generate(session, prompt: str, *, max_new_tokens: int = 24, add: Interventions | None = None,
             clamp: Interventions | None = None, watch: Sequence[str] = (),
             index: FeatureIndex | None = None, temperature: float = 0.0, seed: int = 0,
             model_name: str = "") -> Generation:
    """One continuation of ``prompt`` (module docstring)."""
    model = session.model
    tokenizer = model.tokenizer
    ids = prompt_ids(session, prompt, model_name)
    tokens = torch.tensor([ids], device=model.cfg.device)
    if temperature > 0:
        torch.manual_seed(seed)
    with session.steer(add=add, clamp=clamp):
        out = model.generate(tokens, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                             temperature=temperature if temperature > 0 else 1.0,
                             verbose=False, stop_at_eos=False, return_type="tokens")
    new = [int(t) for t in out[0, len(ids):].tolist()]
    special = set(tokenizer.all_special_ids)
    cut = next((i for i, t in enumerate(new) if t in special), len(new))
    new = new[:cut]
    result = Generation(prompt=prompt, continuation=tokenizer.decode(new), token_ids=new,
                        tokens=[tokenizer.decode([t]) for t in new])
    if watch and new:
        if index is None:
            from .model import feature_index
            index = feature_index(session)
        result.watched = _read(session, ids + new, len(ids), watch, index, add, clamp)
    elif watch:
        result.watched = {name: [] for name in watch}
    return result


def _read(session, ids: list[int], start: int, watch: Sequence[str], index: FeatureIndex,
          add, clamp) -> dict[str, list[float]]:
    model = session.model
    wanted: dict[int, list[tuple[str, int]]] = {}
    for name in watch:
        layer, feature = sae_feature(index, name)
        session._sae(layer)  # a clear error when no SAE is attached there
        wanted.setdefault(layer, []).append((name, feature))
    out: dict[str, list[float]] = {}

    def read(acts, hook, layer):
        sae = session.saes[layer]
        values = sae.encode(acts[0, start:].to(sae.dtype))
        for name, feature in wanted[layer]:
            out[name] = [float(v) for v in values[:, feature].float().cpu()]

    hooks = [(session.saes[layer].cfg.metadata.hook_name,
              lambda acts, hook, layer=layer: read(acts, hook, layer)) for layer in wanted]
    tokens = torch.tensor([ids], device=model.cfg.device)
    with model.hooks(fwd_hooks=hooks), session.steer(add=add, clamp=clamp):
        model(tokens, stop_at_layer=max(wanted) + 1)
    return {name: out[name] for name in watch}


def merge(*interventions: Interventions | None) -> dict[int, dict[int, float]]:
    """Several ``{layer: {feature: strength}}`` as one, strengths of the same feature added."""
    total: dict[int, dict[int, float]] = {}
    for part in interventions:
        for layer, feats in (part or {}).items():
            for feature, strength in feats.items():
                row = total.setdefault(int(layer), {})
                row[int(feature)] = row.get(int(feature), 0.0) + float(strength)
    return total
