"""Load a Qwen3.5 model for SAE features and steering, and read SAE features at a layer.

``load_model(repo_id)`` returns a model that ``qwen_interp_saelens.steer / clamp / suppress``
accept: a TransformerLens ``TransformerBridge`` (it has ``hook_dict`` and ``hooks()``) where the
installed TL has a bridge for the architecture, else the HF text model (forward hooks on
``sae.cfg.metadata.hf_hook_name`` = ``model.layers.{n}``).
"""

from __future__ import annotations

from .adapter import PROFILE_HINT, bridge_architectures, qwen35_supported
from .specs import QWEN35, QWEN35_MOE

BACKENDS = ("bridge", "hf")


def _spec(repo_id: str):
    import qwen_interp
    spec = qwen_interp.registry().model(repo_id)
    if spec.architecture not in (QWEN35, QWEN35_MOE):
        raise ValueError(f"{spec.repo_id} is a {spec.architecture}, not a Qwen3.5 model")
    return spec


def default_backend(spec) -> str:
    if spec.architecture in bridge_architectures():
        return "bridge"
    return "hf"


def load_model(repo_id: str, backend: str | None = None, device: str = "cpu", dtype=None,
               **kwargs):
    """The text model of a registered Qwen3.5 checkpoint (repo id or alias).

    ``backend``: ``"bridge"`` (TransformerLens ``TransformerBridge``) or ``"hf"``
    (``AutoModelForCausalLM``: ``Qwen3_5ForCausalLM`` / ``Qwen3_5MoeForCausalLM``); default:
    bridge where the installed TL has the architecture's adapter (TL 3.9: both), else HF.
    ``kwargs`` go to ``TransformerBridge.boot_transformers`` or ``from_pretrained``.
    """
    if not qwen35_supported():
        raise RuntimeError(PROFILE_HINT)
    import torch
    spec = _spec(repo_id)
    backend = backend or default_backend(spec)
    dtype = dtype or torch.float32
    if backend == "bridge":
        if spec.architecture not in bridge_architectures():
            raise RuntimeError(f"the installed TransformerLens has no TransformerBridge adapter "
                               f"for {spec.architecture}; use backend='hf'")
        from transformer_lens.model_bridge import TransformerBridge
        # Published checkpoints say Qwen3_5(Moe)ForConditionalGeneration, which TL routes to
        # its multimodal adapter (needs torchvision, wraps the vision tower); name the text
        # class so TL picks the text-only adapter, which loads text_config.
        overrides = {"architectures": [spec.architecture],
                     **kwargs.pop("hf_config_overrides", {})}
        return TransformerBridge.boot_transformers(spec.repo_id, device=device, dtype=dtype,
                                                   hf_config_overrides=overrides, **kwargs)
    if backend == "hf":
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(spec.repo_id, dtype=dtype, **kwargs)
        return model.to(device).eval()
    raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")


def sae_features(model, sae, tokens):
    """SAE feature activations ``[batch, pos, d_sae]`` at the SAE's hook point (Qwen-Scope:
    output of decoder layer n) for ``tokens`` (``[batch, pos]`` ids), on a model from
    :func:`load_model`."""
    import torch
    from qwen_interp.fit import check_sae_fits_model
    check_sae_fits_model(sae, model)
    meta = sae.cfg.metadata
    with torch.no_grad():
        if hasattr(model, "hook_dict"):  # TransformerBridge
            _, cache = model.run_with_cache(tokens, names_filter=[meta.hook_name])
            x = cache[meta.hook_name]
        else:  # HF: forward hook on model.layers[n], first element if the output is a tuple
            seen = {}

            def grab(mod, args, out):
                seen["x"] = out[0] if isinstance(out, tuple) else out

            handle = model.get_submodule(meta.hf_hook_name).register_forward_hook(grab)
            try:
                model(tokens)
            finally:
                handle.remove()
            x = seen["x"]
        return sae.encode(x.to(sae.W_enc.dtype))
