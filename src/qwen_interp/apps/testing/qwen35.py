"""Small Qwen3.5 stand-ins for the offline hub (dense and MoE), saved the way the Qwen team
publishes Qwen3.5: a ``Qwen3_5(Moe)ForConditionalGeneration`` checkpoint (text model under
``model.language_model`` plus a vision tower, here one tiny block), so tests load them through
the same path as the real repos (``AutoModelForCausalLM`` -> text-only ``*ForCausalLM``).

Needs transformers >= 5.2 (profile qwen35). Kept out of ``hub.py`` so that the main profile
(transformers 4.57) never imports it.
"""

from __future__ import annotations

import zlib
from pathlib import Path

from qwen_interp.specs import ModelSpec
from .hub import OfflineHub, write_tokenizer

SMALL_D_HEAD = 16
SMALL_N_KV_HEADS = 2
# 4 layers: with one full-attention layer in 4, layers 0-2 are GatedDeltaNet and 3 is full
# attention, so tests see both mixers.
SMALL_N_LAYERS = 4
SMALL_N_EXPERTS = 8
SMALL_EXPERTS_PER_TOKEN = 2


def _seed(name: str) -> int:
    return zlib.crc32(name.encode())


def small_text_kwargs(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS) -> dict:
    """Text-config kwargs that keep ``spec``'s flags: the GQA ratio, head_dim wider than
    hidden/heads (Qwen3.5: 256 * heads != hidden), the 3:1 GatedDeltaNet / full-attention
    pattern, partial rotary, tying, the real vocabulary and eps."""
    from qwen_interp_qwen35.specs import EXTRA
    extra = EXTRA[spec.repo_id]
    group = spec.n_heads // spec.n_kv_heads
    n_heads = SMALL_N_KV_HEADS * group
    width_ratio = spec.d_model / (spec.n_heads * spec.d_head)
    d_model = round(width_ratio * n_heads * SMALL_D_HEAD)
    # linear attention: same value/key head ratio as the real model, 2 key heads of 16
    lin_k = 2
    lin_v = lin_k * extra.linear_num_value_heads // extra.linear_num_key_heads
    kwargs = dict(vocab_size=spec.vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                  num_attention_heads=n_heads, num_key_value_heads=SMALL_N_KV_HEADS,
                  head_dim=SMALL_D_HEAD, max_position_embeddings=spec.max_position_embeddings,
                  rms_norm_eps=spec.rms_norm_eps, tie_word_embeddings=spec.tied_embeddings,
                  linear_num_key_heads=lin_k, linear_num_value_heads=lin_v,
                  linear_key_head_dim=SMALL_D_HEAD, linear_value_head_dim=SMALL_D_HEAD,
                  layer_types=["linear_attention" if (i + 1) % extra.full_attention_interval
                               else "full_attention" for i in range(n_layers)],
                  rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta,
                                   "partial_rotary_factor": 0.25},
                  bos_token_id=None, eos_token_id=151643)
    if spec.n_experts:
        scale = d_model / spec.d_model
        kwargs.update(num_experts=SMALL_N_EXPERTS, num_experts_per_tok=SMALL_EXPERTS_PER_TOKEN,
                      moe_intermediate_size=max(8, round(spec.d_expert_mlp * scale)),
                      shared_expert_intermediate_size=max(
                          8, round(extra.shared_expert_intermediate_size * scale)))
    else:
        kwargs["intermediate_size"] = round(spec.d_mlp / spec.d_model * d_model)
    return kwargs


def small_config_qwen35(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS):
    """A small published-layout config (``Qwen3_5Config`` / ``Qwen3_5MoeConfig``: text + tiny
    vision) for ``spec`` (a Qwen3.5 spec of the ``qwen35`` plugin)."""
    from qwen_interp_qwen35.specs import PUBLISHED_ARCHITECTURE, QWEN35, QWEN35_MOE
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
