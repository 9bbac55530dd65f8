"""Qwen3.5 checkpoints behind the Qwen-Scope releases, their hook points, and the two
``ModelFamily`` records (config class, hook names, offline stand-in recipe; no TransformerLens
capability: there is no ``HookedTransformer`` for Qwen3.5).

Published Qwen3.5 checkpoints are vision-language (``architectures:
["Qwen3_5ForConditionalGeneration"]`` / ``Qwen3_5MoeForConditionalGeneration``, text under
``model.language_model``); transformers >= 5.2 loads their text part as ``Qwen3_5ForCausalLM`` /
``Qwen3_5MoeForCausalLM`` through ``AutoModelForCausalLM`` (it strips ``language_model`` from the
weight names). The SAEs read that text model, so specs and hook maps name the text classes.

Verified facts: d_model and layer counts (= the Qwen-Scope release shapes); 9B and
35B-A3B also equal transformers' ``Qwen3_5TextConfig`` / ``Qwen3_5MoeTextConfig`` defaults
(documented there as the Qwen3.5-9B / Qwen3.5-35B-A3B configurations): heads 16/4 and 16/2,
head_dim 256, inter 12288, vocab 248320, 256 experts, 8 per token, expert and shared-expert
inter 512, linear attention 16 key / 32 value heads of 128, one full-attention layer in 4.
2B and 27B heads / MLP / linear heads / tying are from the published config.json as recalled,
NOT verified here (no Hub access); a wrong value only changes the small test stand-in's ratios.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen_interp.specs import HookNameMap, HookPoint, ModelFamily, ModelSpec

QWEN35 = "Qwen3_5ForCausalLM"
QWEN35_MOE = "Qwen3_5MoeForCausalLM"
# What the published config.json says (the class transformers builds with AutoModel for
# image-text-to-text); loading with AutoModelForCausalLM gives the classes above.
PUBLISHED_ARCHITECTURE = {QWEN35: "Qwen3_5ForConditionalGeneration",
                          QWEN35_MOE: "Qwen3_5MoeForConditionalGeneration"}

VOCAB = 248320  # Qwen3.5's own tokenizer (not Qwen3's 151,936)
MAX_POSITIONS = 262144  # recalled from config.json; not verified
ROPE_THETA = 10_000_000.0  # recalled from config.json; not verified


@dataclass(frozen=True)
class Qwen35Extra:
    """Qwen3.5 config facts that ``ModelSpec`` has no field for."""

    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    linear_head_dim: int = 128
    full_attention_interval: int = 4  # layers 3, 7, ... are full attention, the rest GatedDeltaNet
    shared_expert_intermediate_size: int = 0  # MoE only
    verified: bool = False  # True: every value checked against transformers' config defaults


def _spec(name, arch, d_model, n_layers, heads, kv, d_mlp, tied, **moe) -> ModelSpec:
    return ModelSpec(f"Qwen/{name}", arch, d_model=d_model, n_layers=n_layers, n_heads=heads,
                     n_kv_heads=kv, d_head=256, d_mlp=d_mlp, tied_embeddings=tied,
                     aliases=(name.lower(),), vocab_size=VOCAB,
                     max_position_embeddings=MAX_POSITIONS, rope_theta=ROPE_THETA, **moe)


QWEN35_MODELS = (
    _spec("Qwen3.5-2B-Base", QWEN35, 2048, 24, 8, 2, 6144, tied=True),
    _spec("Qwen3.5-9B-Base", QWEN35, 4096, 32, 16, 4, 12288, tied=False),
    _spec("Qwen3.5-27B", QWEN35, 5120, 64, 24, 4, 17408, tied=False),
    _spec("Qwen3.5-35B-A3B-Base", QWEN35_MOE, 2048, 40, 16, 2, 512, tied=False,
          n_experts=256, experts_per_token=8, d_expert_mlp=512),
)

EXTRA = {
    "Qwen/Qwen3.5-2B-Base": Qwen35Extra(linear_num_value_heads=16),
    "Qwen/Qwen3.5-9B-Base": Qwen35Extra(verified=True),
    "Qwen/Qwen3.5-27B": Qwen35Extra(linear_num_value_heads=48),
    "Qwen/Qwen3.5-35B-A3B-Base": Qwen35Extra(shared_expert_intermediate_size=512, verified=True),
}

# resid_post = output of decoder layer n (first element if a tuple) = what Qwen-Scope reads.
# There is no HookedTransformer for Qwen3.5: ``tl`` names are the TransformerBridge's (the SAE
# configs' ``hook_name``), equal to ``bridge``.
# Every layer has it whether its mixer is GatedDeltaNet (``linear_attn``) or full attention
# (``self_attn``), so only layer-wide points are listed. ``bridge`` names are TransformerBridge's
# (TL 3.9 qwen3_5 / qwen3_5_moe adapters; each tested equal to HF in the qwen35 profile).
QWEN35_HOOKS = HookNameMap(QWEN35, {
    "embed": HookPoint(tl="hook_embed", hf_module="model.embed_tokens", hf_port="output",
                       bridge="hook_embed"),
    "resid_pre": HookPoint(tl="blocks.{layer}.hook_resid_pre", hf_module="model.layers.{layer}",
                           hf_port="input", bridge="blocks.{layer}.hook_resid_pre"),
    "mlp_in": HookPoint(tl="blocks.{layer}.mlp.hook_in", hf_module="model.layers.{layer}.mlp",
                        hf_port="input", bridge="blocks.{layer}.mlp.hook_in"),
    "mlp_out": HookPoint(tl="blocks.{layer}.hook_mlp_out", hf_module="model.layers.{layer}.mlp",
                         hf_port="output", bridge="blocks.{layer}.hook_mlp_out"),
    "resid_post": HookPoint(tl="blocks.{layer}.hook_resid_post",
                            hf_module="model.layers.{layer}", hf_port="output",
                            bridge="blocks.{layer}.hook_resid_post"),
})
# The MoE block is ``model.layers.{layer}.mlp`` (router ``mlp.gate``, ``mlp.experts``,
# ``mlp.shared_expert``); its output is a tensor. ``router_logits``: the gate returns
# (logits, top-k weights, top-k indices); the first element, [batch*pos, n_experts] in HF.
QWEN35_MOE_HOOKS = HookNameMap(QWEN35_MOE, {
    **QWEN35_HOOKS.points,
    "router_logits": HookPoint(tl="blocks.{layer}.mlp.gate.hook_out",
                               hf_module="model.layers.{layer}.mlp.gate", hf_port="output",
                               bridge="blocks.{layer}.mlp.gate.hook_out"),
})


# --- offline stand-ins ---------------------------------------------------------------------------
SMALL_D_HEAD = 16
SMALL_N_KV_HEADS = 2
# 4 layers: with one full-attention layer in 4, layers 0-2 are GatedDeltaNet and 3 is full
# attention, so tests see both mixers.
SMALL_N_LAYERS = 4
SMALL_N_EXPERTS = 8
SMALL_EXPERTS_PER_TOKEN = 2


def small_text_kwargs(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS) -> dict:
    """Text-config kwargs that keep ``spec``'s flags: the GQA ratio, head_dim wider than
    hidden/heads (Qwen3.5: 256 * heads != hidden), the 3:1 GatedDeltaNet / full-attention
    pattern, partial rotary, tying, the real vocabulary and eps. Pure arithmetic: any
    transformers version can call it."""
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


def qwen35_stand_in(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS):
    """A small text-only ``Qwen3_5TextConfig`` for ``spec`` (needs transformers >= 5.2)."""
    from transformers import Qwen3_5TextConfig
    return Qwen3_5TextConfig(**small_text_kwargs(spec, n_layers), architectures=[QWEN35])


def qwen35_moe_stand_in(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS):
    """A small text-only ``Qwen3_5MoeTextConfig`` for ``spec`` (needs transformers >= 5.2)."""
    from transformers import Qwen3_5MoeTextConfig
    return Qwen3_5MoeTextConfig(**small_text_kwargs(spec, n_layers), architectures=[QWEN35_MOE])


QWEN35_FAMILY = ModelFamily(QWEN35, hf_config_class="Qwen3_5TextConfig", hook_names=QWEN35_HOOKS,
                            stand_in=qwen35_stand_in)
QWEN35_MOE_FAMILY = ModelFamily(QWEN35_MOE, hf_config_class="Qwen3_5MoeTextConfig",
                                hook_names=QWEN35_MOE_HOOKS, stand_in=qwen35_moe_stand_in)
