"""Small Qwen3.5 stand-ins for the offline hub (dense and MoE), saved the way the Qwen team
publishes Qwen3.5: a ``Qwen3_5(Moe)ForConditionalGeneration`` checkpoint (text model under
``model.language_model`` plus a vision tower, here one tiny block), so tests load them through
the same path as the real repos (``AutoModelForCausalLM`` -> text-only ``*ForCausalLM``).

The text config is the ``qwen35`` plugin's stand-in recipe; this module adds the published
checkpoint layout. Building needs transformers >= 5.2 (profile qwen35); importing does not.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from qwen_interp.specs import ModelSpec
from qwen_interp_qwen35 import PUBLISHED_ARCHITECTURE, QWEN35, QWEN35_MOE, small_text_kwargs
from qwen_interp_qwen35.specs import SMALL_N_LAYERS  # 4: layers 0-2 GatedDeltaNet, 3 full attention

from .hub import OfflineHub, write_tokenizer

__all__ = ["SMALL_N_LAYERS", "qwen35_model", "randomize_qwen35_", "small_config_qwen35",
           "small_text_kwargs"]


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def small_config_qwen35(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS):
    """A small published-layout config (``Qwen3_5Config`` / ``Qwen3_5MoeConfig``: text + tiny
    vision) for ``spec`` (a Qwen3.5 spec of the ``qwen35`` plugin): the text part is the
    plugin's stand-in recipe (``small_text_kwargs``), the vision tower one tiny block."""
    text = small_text_kwargs(spec, n_layers)
    vision = dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, patch_size=4,
                  temporal_patch_size=2, spatial_merge_size=2, num_position_embeddings=16,
                  out_hidden_size=text["hidden_size"])
    if spec.architecture == QWEN35:
        from transformers import Qwen3_5Config as Config
    elif spec.architecture == QWEN35_MOE:
        from transformers import Qwen3_5MoeConfig as Config
    else:
        raise ValueError(f"no Qwen3.5 small-config recipe for {spec.architecture} ({spec.repo_id})")
    return Config(text_config=text, vision_config=vision,
                  tie_word_embeddings=spec.tied_embeddings,
                  architectures=[PUBLISHED_ARCHITECTURE[spec.architecture]])


def randomize_qwen35_(model, seed: int) -> None:
    """Random weights with O(1) activations: fan-in scaling on the last dim (also for the 3-D
    expert tensors), norm parameters away from their identity (Qwen3.5 norms are zero-centred:
    gain = 1 + weight, so weight ~ 0.2 * N(0, 1))."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                base = 1.0 if p.mean().abs() > 0.5 else 0.0  # gated / vision norms use gain w
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 2 / p.shape[-1] ** 0.5)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def qwen35_model(hub: OfflineHub, spec: ModelSpec, n_layers: int = SMALL_N_LAYERS) -> Path:
    """The snapshot of ``spec.repo_id``: a small random-weight stand-in in the published
    (vision-language) layout, bf16, with the genuine Qwen3 tokenizer (Qwen3.5's own tokenizer is
    not available offline; its ids are a subset of the 248,320-entry vocabulary)."""
    def write(folder: Path) -> None:
        import torch
        from transformers import AutoModelForImageTextToText
        config = small_config_qwen35(spec, n_layers=n_layers)
        torch.manual_seed(_seed(spec.repo_id))
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
        randomize_qwen35_(model, _seed(spec.repo_id))
        model.to(torch.bfloat16).save_pretrained(folder)
        write_tokenizer(folder)

    return hub.snapshot(spec.repo_id, write)
