"""Built-in plugin: the Qwen3 model families (dense and MoE) — checkpoints, hook points, and one
``ModelFamily`` record per architecture (config class, hook names, capabilities, offline stand-in).

Facts are the public ``config.json`` values of each checkpoint on the Hugging Face Hub. Ecosystem
plugins (TransformerLens, circuit-tracer, SAELens) read these records; none hard-codes them.
"""

from __future__ import annotations

from qwen_interp import hookimpl
from qwen_interp.compat import KnownBad, known_bad_check
from qwen_interp.specs import (HOOKED_TRANSFORMER, TL_FAST_FORWARD, TL_FAST_LOAD, TL_MOE,
                               HookNameMap, HookPoint, ModelFamily, ModelSpec)

QWEN3 = "Qwen3ForCausalLM"
QWEN3_MOE = "Qwen3MoeForCausalLM"

QWEN3_BASE_MODELS = (
    ModelSpec("Qwen/Qwen3-0.6B-Base", QWEN3, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8,
              d_head=128, d_mlp=3072, tied_embeddings=True, aliases=("qwen3-0.6b-base",)),
    ModelSpec("Qwen/Qwen3-1.7B-Base", QWEN3, d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8,
              d_head=128, d_mlp=6144, tied_embeddings=True, aliases=("qwen3-1.7b-base",)),
    ModelSpec("Qwen/Qwen3-4B-Base", QWEN3, d_model=2560, n_layers=36, n_heads=32, n_kv_heads=8,
              d_head=128, d_mlp=9728, tied_embeddings=True, aliases=("qwen3-4b-base",)),
    ModelSpec("Qwen/Qwen3-8B-Base", QWEN3, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8,
              d_head=128, d_mlp=12288, tied_embeddings=False, aliases=("qwen3-8b-base",)),
    ModelSpec("Qwen/Qwen3-14B-Base", QWEN3, d_model=5120, n_layers=40, n_heads=40, n_kv_heads=8,
              d_head=128, d_mlp=17408, tied_embeddings=False, aliases=("qwen3-14b-base",)),
)

# Mixture of experts: every layer sparse (decoder_sparse_step 1, no mlp_only_layers),
# norm_topk_prob true. d_mlp is config.json's intermediate_size (unused by the checkpoint: no
# dense layer), d_expert_mlp its moe_intermediate_size.
QWEN3_MOE_BASE_MODELS = (
    ModelSpec("Qwen/Qwen3-30B-A3B-Base", QWEN3_MOE, d_model=2048, n_layers=48, n_heads=32,
              n_kv_heads=4, d_head=128, d_mlp=6144, tied_embeddings=False,
              aliases=("qwen3-30b-a3b-base",), n_experts=128, experts_per_token=8,
              d_expert_mlp=768),
)

# One map, used by every plugin; each point is the same tensor in every ecosystem (tested).
# TL's ``*.hook_normalized`` points are *before* the norm gain, so they are not listed.
# TL names are HookedTransformer's (``mlp.hook_in`` /
# ``mlp.hook_out`` exist once circuit-tracer wraps the MLP); nnsight locations follow
# circuit-tracer's envoy syntax; HF module paths are those of ``Qwen3ForCausalLM``.
QWEN3_HOOKS = HookNameMap(QWEN3, {
    "embed": HookPoint(tl="hook_embed", hf_module="model.embed_tokens", hf_port="output",
                       bridge="hook_embed", nnsight="model.embed_tokens"),
    "resid_pre": HookPoint(tl="blocks.{layer}.hook_resid_pre", hf_module="model.layers.{layer}",
                           hf_port="input", bridge="blocks.{layer}.hook_resid_pre",
                           nnsight="model.layers[{layer}]"),
    "attn_out": HookPoint(tl="blocks.{layer}.hook_attn_out",
                          hf_module="model.layers.{layer}.self_attn", hf_port="output",
                          bridge="blocks.{layer}.hook_attn_out",
                          nnsight="model.layers[{layer}].self_attn"),
    "resid_mid": HookPoint(tl="blocks.{layer}.hook_resid_mid",
                           hf_module="model.layers.{layer}.post_attention_layernorm",
                           hf_port="input", bridge="blocks.{layer}.hook_resid_mid",
                           nnsight="model.layers[{layer}].post_attention_layernorm"),
    # The MLP input after the pre-MLP RMSNorm *with* its gain (BluelightAI's CLT input).
    "mlp_in": HookPoint(tl="blocks.{layer}.mlp.hook_in", hf_module="model.layers.{layer}.mlp",
                        hf_port="input", bridge="blocks.{layer}.mlp.hook_in",
                        nnsight="model.layers[{layer}].post_attention_layernorm",
                        nnsight_port="output"),
    "mlp_out": HookPoint(tl="blocks.{layer}.hook_mlp_out", hf_module="model.layers.{layer}.mlp",
                         hf_port="output", bridge="blocks.{layer}.hook_mlp_out",
                         nnsight="model.layers[{layer}].mlp",
                         tl_aliases=("blocks.{layer}.mlp.hook_out",)),
    "resid_post": HookPoint(tl="blocks.{layer}.hook_resid_post",
                            hf_module="model.layers.{layer}", hf_port="output",
                            bridge="blocks.{layer}.hook_resid_post",
                            nnsight="model.layers[{layer}]"),
})

# Qwen3-MoE: the same dense points (the MoE block is ``model.layers.{layer}.mlp``; HF returns
# (output, router_logits), the first element is the point), plus MoE points. ``router_logits``:
# TL [batch, pos, n_experts], HF's gate output [batch*pos, n_experts] (HF flattens tokens).
# ``expert_out`` has a second placeholder, ``{expert}``: one expert's output before its routing
# weight, on the tokens routed to it only ([n_routed, d_model], same row order in TL and HF).
# TransformerBridge names of the MoE points are not verified, so left out.
QWEN3_MOE_HOOKS = HookNameMap(QWEN3_MOE, {
    **QWEN3_HOOKS.points,
    "router_logits": HookPoint(tl="blocks.{layer}.mlp.hook_router_logits",
                               hf_module="model.layers.{layer}.mlp.gate", hf_port="output",
                               nnsight="model.layers[{layer}].mlp.gate"),
    "expert_out": HookPoint(tl="blocks.{layer}.mlp.experts.{expert}.hook_out",
                            hf_module="model.layers.{layer}.mlp.experts.{expert}",
                            hf_port="output",
                            nnsight="model.layers[{layer}].mlp.experts[{expert}]"),
})


# --- offline stand-ins ---------------------------------------------------------------------------
SMALL_D_HEAD = 16
SMALL_N_KV_HEADS = 2
SMALL_N_LAYERS = 3
SMALL_N_EXPERTS = 8
QWEN_ENDOFTEXT = 151643  # <|endoftext|>: Base checkpoints' bos and eos in config.json


def small_config_kwargs(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS) -> dict:
    """Config kwargs of a small model that keeps every architecture flag of ``spec``: the GQA
    ratio, ``head_dim`` vs ``hidden_size / heads`` (0.6B and 4B differ from 1), tied or untied
    embeddings, the real vocabulary (so the genuine tokenizer fits), rope theta, eps, context."""
    group = spec.n_heads // spec.n_kv_heads
    n_heads = SMALL_N_KV_HEADS * group
    width_ratio = spec.d_model / (spec.n_heads * spec.d_head)
    d_model = round(width_ratio * n_heads * SMALL_D_HEAD)
    return dict(vocab_size=spec.vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, num_key_value_heads=SMALL_N_KV_HEADS,
                head_dim=SMALL_D_HEAD, intermediate_size=round(spec.d_mlp / spec.d_model * d_model),
                max_position_embeddings=spec.max_position_embeddings,
                tie_word_embeddings=spec.tied_embeddings, rope_theta=spec.rope_theta,
                rms_norm_eps=spec.rms_norm_eps, torch_dtype="bfloat16",
                bos_token_id=QWEN_ENDOFTEXT, eos_token_id=QWEN_ENDOFTEXT,
                architectures=[spec.architecture])


def qwen3_stand_in(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS):
    """A small ``Qwen3Config`` with ``spec``'s architecture flags (see ``small_config_kwargs``)."""
    from transformers import Qwen3Config
    return Qwen3Config(**small_config_kwargs(spec, n_layers))


def qwen3_moe_stand_in(spec: ModelSpec, n_layers: int = SMALL_N_LAYERS):
    """A small ``Qwen3MoeConfig``: at most 8 experts, half of them or fewer per token, the expert
    MLP width scaled like the model's, every layer sparse and routing weights renormalised (as in
    every Qwen3-MoE checkpoint)."""
    from transformers import Qwen3MoeConfig
    kwargs = small_config_kwargs(spec, n_layers)
    n_experts = min(spec.n_experts, SMALL_N_EXPERTS)
    d_expert = max(8, round(spec.d_expert_mlp / spec.d_model * kwargs["hidden_size"]))
    return Qwen3MoeConfig(num_experts=n_experts,
                          num_experts_per_tok=min(spec.experts_per_token, n_experts // 2),
                          moe_intermediate_size=d_expert, norm_topk_prob=True,
                          decoder_sparse_step=1, mlp_only_layers=[], **kwargs)


QWEN3_FAMILY = ModelFamily(
    QWEN3, hf_config_class="Qwen3Config", hook_names=QWEN3_HOOKS,
    capabilities=frozenset({HOOKED_TRANSFORMER, TL_FAST_LOAD, TL_FAST_FORWARD}),
    stand_in=qwen3_stand_in)
QWEN3_MOE_FAMILY = ModelFamily(
    QWEN3_MOE, hf_config_class="Qwen3MoeConfig", hook_names=QWEN3_MOE_HOOKS,
    capabilities=frozenset({HOOKED_TRANSFORMER, TL_MOE, TL_FAST_FORWARD}),
    stand_in=qwen3_moe_stand_in)


@hookimpl
def register_models(register):
    for spec in (*QWEN3_BASE_MODELS, *QWEN3_MOE_BASE_MODELS):
        register(spec)


@hookimpl
def register_model_families(register):
    register(QWEN3_FAMILY)
    register(QWEN3_MOE_FAMILY)


# Known-bad transformers releases for Qwen3 checkpoints, reported by `qwen-interp doctor`.
KNOWN_BAD = (
    KnownBad("transformers", "==4.57.2", "tokenizer loading calls the Hub even with "
             "HF_HUB_OFFLINE=1 (_patch_mistral_regex); use 4.57.1"),
    KnownBad("transformers", "==4.57.3", "tokenizer loading calls the Hub even with "
             "HF_HUB_OFFLINE=1 (_patch_mistral_regex); use 4.57.1"),
)


@hookimpl
def register_doctor_checks(register):
    register(known_bad_check("qwen3-versions", KNOWN_BAD))
