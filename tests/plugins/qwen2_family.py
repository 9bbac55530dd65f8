"""A model family added by one plugin file: Qwen2 (``Qwen2ForCausalLM``), which TransformerLens's
HookedTransformer loads upstream. It registers one checkpoint and one ``ModelFamily`` record
(config class, hook names, capabilities, offline stand-in recipe); nothing else in the project
names Qwen2. Used by tests/test_model_family_plugin.py."""

from __future__ import annotations

from qwen_interp import hookimpl
from qwen_interp.specs import HOOKED_TRANSFORMER, HookNameMap, HookPoint, ModelFamily, ModelSpec

QWEN2 = "Qwen2ForCausalLM"

# A made-up repo id with Qwen2-0.5B's config.json numbers.
QWEN2_TINY = ModelSpec("test-org/Qwen2-Tiny", QWEN2, d_model=896, n_layers=24, n_heads=14,
                       n_kv_heads=2, d_head=64, d_mlp=4864, tied_embeddings=True,
                       aliases=("qwen2-tiny",))

# HookedTransformer names and HF module paths of Qwen2ForCausalLM (the same layout as Qwen3).
QWEN2_HOOKS = HookNameMap(QWEN2, {
    "embed": HookPoint(tl="hook_embed", hf_module="model.embed_tokens", hf_port="output"),
    "resid_pre": HookPoint(tl="blocks.{layer}.hook_resid_pre", hf_module="model.layers.{layer}",
                           hf_port="input"),
    "attn_out": HookPoint(tl="blocks.{layer}.hook_attn_out",
                          hf_module="model.layers.{layer}.self_attn", hf_port="output"),
    "resid_mid": HookPoint(tl="blocks.{layer}.hook_resid_mid",
                           hf_module="model.layers.{layer}.post_attention_layernorm",
                           hf_port="input"),
    "mlp_out": HookPoint(tl="blocks.{layer}.hook_mlp_out", hf_module="model.layers.{layer}.mlp",
                         hf_port="output"),
    "resid_post": HookPoint(tl="blocks.{layer}.hook_resid_post",
                            hf_module="model.layers.{layer}", hf_port="output"),
})


def qwen2_stand_in(spec: ModelSpec, n_layers: int = 2):
    """A small ``Qwen2Config`` with ``spec``'s GQA ratio (2 KV heads of 16), MLP ratio, tying,
    vocabulary (so the genuine Qwen tokenizer fits), rope theta and eps."""
    from transformers import Qwen2Config
    n_heads = 2 * spec.n_heads // spec.n_kv_heads
    d_model = 16 * n_heads  # Qwen2 has no head_dim: it is hidden_size / heads
    return Qwen2Config(vocab_size=spec.vocab_size, hidden_size=d_model,
                       intermediate_size=round(spec.d_mlp / spec.d_model * d_model),
                       num_hidden_layers=n_layers, num_attention_heads=n_heads,
                       num_key_value_heads=2, max_position_embeddings=spec.max_position_embeddings,
                       rope_theta=spec.rope_theta, rms_norm_eps=spec.rms_norm_eps,
                       tie_word_embeddings=spec.tied_embeddings, architectures=[spec.architecture])


QWEN2_FAMILY = ModelFamily(QWEN2, hf_config_class="Qwen2Config", hook_names=QWEN2_HOOKS,
                           capabilities=frozenset({HOOKED_TRANSFORMER}), stand_in=qwen2_stand_in)


@hookimpl
def register_models(register):
    register(QWEN2_TINY)


@hookimpl
def register_model_families(register):
    register(QWEN2_FAMILY)
