"""Steering with Qwen-Scope features, the way the Qwen-Scope demo does it.

At the SAE's layer output (TL ``blocks.{n}.hook_resid_post``; HF ``model.layers[n]`` output):

- :func:`steer`: ``h += strength * W_dec[:, f]`` (Qwen-Scope layout; SAELens's ``W_dec[f]``), at
  every position, for each ``{feature: strength}``.
- :func:`clamp`: set the activation of ``f`` to ``value``, keeping the SAE's error term:
  ``h += (value - a_f(h)) * W_dec[:, f]`` with ``a_f`` the SAE's top-k activation of ``f``.
- :func:`suppress`: clamp to 0 (only positions where ``f`` is active change).

Each is a context manager that works on a TransformerLens ``HookedTransformer`` (including
``HookedSAETransformer``) or an HF ``Qwen3ForCausalLM``, around forward passes or ``generate``;
the hook is removed on exit, also when the body raises::

    with suppress(model, sae, [chinese_feature]):
        model.generate(prompt, max_new_tokens=20)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from .loader import check_sae_fits_model


def _feature_dict(features, default) -> dict[int, float]:
    if isinstance(features, Mapping):
        return {int(f): float(v) for f, v in features.items()}
    if isinstance(features, int):
        features = [features]
    if default is None:
        raise ValueError("give {feature: value} or features with a value")
    return {int(f): float(default) for f in features}


@contextlib.contextmanager
def steer(model, sae, features: Mapping[int, float] | Iterable[int] | int,
          strength: float | None = None):
    """Add ``strength * W_dec[:, f]`` to the SAE's hook point for each feature."""
    feats = _feature_dict(features, strength)
    _check_features(sae, feats)
    idx = list(feats)
    delta = (sae.W_dec[idx].detach().T @ _values(sae, feats)).detach()  # (d_model,)

    def edit(h):
        return h + delta.to(h.dtype)

    with _edit_hook(model, sae, edit):
        yield


@contextlib.contextmanager
def clamp(model, sae, features: Mapping[int, float] | Iterable[int] | int,
          value: float | None = None):
    """Set each feature's SAE activation to ``value`` at every position (error term kept)."""
    feats = _feature_dict(features, value)
    _check_features(sae, feats)
    idx = list(feats)
    W = sae.W_dec[idx].detach()  # (n, d_model)
    target = _values(sae, feats)

    def edit(h):
        import torch
        with torch.no_grad():
            acts = sae.encode(h.to(sae.W_enc.dtype))[..., idx]  # (..., n)
            return h + ((target - acts) @ W).to(h.dtype)

    with _edit_hook(model, sae, edit):
        yield


def suppress(model, sae, features: Iterable[int] | int):
    """Clamp features to 0 (e.g. a language feature, as in the Qwen-Scope demo)."""
    return clamp(model, sae, features, 0.0)


def _values(sae, feats: dict[int, float]):
    import torch
    return torch.tensor(list(feats.values()), dtype=sae.W_dec.dtype, device=sae.W_dec.device)


def _check_features(sae, feats: dict[int, float]) -> None:
    bad = [f for f in feats if not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise IndexError(f"features {bad} out of range for an SAE of width {sae.cfg.d_sae}")


@contextlib.contextmanager
def _edit_hook(model, sae, edit: Callable):
    """Apply ``edit`` to the value at the SAE's hook point while the context is open."""
    check_sae_fits_model(sae, model)
    meta = sae.cfg.metadata
    if hasattr(model, "hook_dict"):  # TransformerLens
        name = meta.hook_name
        if name not in model.hook_dict and f"{name}.hook_sae_output" in model.hook_dict:
            name = f"{name}.hook_sae_output"  # an SAE is spliced in there: edit what it outputs
        if name not in model.hook_dict:
            raise KeyError(f"model has no hook point {meta.hook_name!r}")
        # TL's hooks() context removes these hooks in a finally block.
        with model.hooks(fwd_hooks=[(name, lambda act, hook: edit(act))]):
            yield
        return
    module = model.get_submodule(meta.hf_hook_name)  # HF transformers

    def hf_hook(mod, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]), *output[1:])
        return edit(output)

    handle = module.register_forward_hook(hf_hook)
    try:
        yield
    finally:
        handle.remove()
