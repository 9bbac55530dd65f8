"""Part ``moe``: Qwen3-MoE (``Qwen3MoeForCausalLM``, e.g. Qwen/Qwen3-30B-A3B-Base) in
``HookedTransformer``.

TransformerLens 3.2.1 has no HookedTransformer path for this architecture. This module adds the
three missing pieces, each made through the part's ``PatchSet`` (so ``deactivate()`` restores
upstream exactly) and each active only for configs of the model families that declare ``TL_MOE``
(the Qwen3-MoE checkpoint layout):

- config conversion: the Qwen3 branch (q/k norm, GQA, rotary) plus the MoE fields;
- the MoE block (:class:`Qwen3MoE`), built by a subclass of TL's ``MLPFactory`` that
  ``components.transformer_block`` looks up at block construction;
- weight conversion, and loading that keeps expert weights out of TL's weight processing.

The config branch, the MoE block and the weight conversion are also, as source, the upstream
patch ``qwen3-moe`` (``upstream_patches_moe.py`` here cuts them from this
file); on a TransformerLens whose config conversion already knows a family's architecture, the
part stands down for that family.

Routing is HF's, step for step (``Qwen3MoeSparseMoeBlock``): softmax over *all* router logits in
fp32, top-k, then renormalise the k weights iff ``norm_topk_prob``. (With renormalisation this
equals a softmax over the top-k logits; without it, it does not, so we never take that shortcut.)

Memory: the converted state dict holds the HF expert tensors themselves (no copies), the TL
experts are created in ``cfg.dtype`` without random init (TL's own MoE makes them fp32 whatever
the dtype), and the router and expert weights are copied into the model one by one *before* TL's
weight processing, which would otherwise clone or upcast (bf16 -> fp32) all of them at once.

Default processing: TL's ``load_and_process_state_dict`` skips ``fold_ln`` for any MoE model,
but ``from_pretrained`` has by then built weightless RMSNormPre norms, so the gains would be
dropped. Here the norms are folded as for dense Qwen3 (ln2's gain into the router and each
expert's W_in/W_gate, which is exact), so ``from_pretrained`` and
``from_pretrained_no_processing`` both match HF.

Not supported: dense MLP layers inside an MoE model (``mlp_only_layers`` non-empty or
``decoder_sparse_step`` > 1 leaving some layer dense). HookedTransformer has one MLP kind and one
``d_mlp`` for all blocks; such configs raise ``NotImplementedError`` instead of computing wrong
numbers. Every published Qwen3-MoE checkpoint is MoE in every layer.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwen_interp.adapters import AlreadyUpstream
from qwen_interp.patching import PatchSet
from qwen_interp.specs import TL_MOE

from .families import local_checkpoint_architecture, model_families, models, needed

# torch and transformer_lens are imported inside functions: this module is imported with the
# plugin at ``import qwen_interp``, which must stay cheap.
if TYPE_CHECKING:
    import torch

# The architecture the upstream patch names in TransformerLens's own branches. At run time the
# part acts on the families that declare TL_MOE, whatever their architecture.
ARCHITECTURE = "Qwen3MoeForCausalLM"


# --- config ------------------------------------------------------------------------------------
def hooked_transformer_config(hf_config, model_name: str) -> dict[str, Any]:
    """``convert_hf_model_config``'s dict for a Qwen3-MoE ``transformers`` config.

    Everything between this docstring and ``return cfg_dict`` is also, verbatim, the
    ``Qwen3MoeForCausalLM`` branch of ``convert_hf_model_config`` in the upstream patch
    (``upstream_patches_moe.py`` here): keep it self-contained (only
    ``hf_config`` and ``model_name``, no plugin names)."""
    # Layers HF builds with a dense MLP (Qwen3MoeDecoderLayer.__init__'s rule): HookedTransformer
    # has one MLP kind and one d_mlp for all blocks, so such configs are refused.
    dense = [
        i
        for i in range(hf_config.num_hidden_layers)
        if i in hf_config.mlp_only_layers
        or hf_config.num_experts <= 0
        or (i + 1) % hf_config.decoder_sparse_step != 0
    ]
    if dense:
        raise NotImplementedError(
            f"{model_name}: layers {dense} use a dense MLP (mlp_only_layers="
            f"{list(hf_config.mlp_only_layers)}, decoder_sparse_step="
            f"{hf_config.decoder_sparse_step}, num_experts={hf_config.num_experts}). "
            "HookedTransformer builds every block with the same MLP, so only Qwen3-MoE configs "
            "whose every layer is sparse are supported (as in all published checkpoints)."
        )
    head_dim = getattr(hf_config, "head_dim", None) or (
        hf_config.hidden_size // hf_config.num_attention_heads
    )
    rope_theta: Any = getattr(hf_config, "rope_theta", None)
    if rope_theta is None:  # newer transformers keep it in rope_parameters
        rope_theta = (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta")
    rope_scaling = getattr(hf_config, "rope_scaling", None)
    if rope_scaling and rope_scaling.get("rope_type", rope_scaling.get("type")) != "default":
        raise NotImplementedError(f"{model_name}: rope_scaling {rope_scaling} is not supported")
    if getattr(hf_config, "use_sliding_window", False):
        raise NotImplementedError(f"{model_name}: sliding-window attention is not supported")
    cfg_dict = {
        # The attention half is the Qwen3ForCausalLM branch, field for field.
        "d_model": hf_config.hidden_size,
        "d_head": head_dim,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": (
            hf_config.num_key_value_heads
            if hf_config.num_key_value_heads != hf_config.num_attention_heads
            else None
        ),
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": 2048,  # as the Qwen3ForCausalLM branch
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "use_attn_scale": True,
        "initializer_range": hf_config.initializer_range,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_base": int(rope_theta),
        "rotary_adjacent_pairs": False,
        "rotary_dim": head_dim,
        "tokenizer_prepends_bos": True,
        "final_rms": True,
        "gated_mlp": True,
        "default_prepend_bos": False,
        "use_qk_norm": True,
        "tie_word_embeddings": hf_config.tie_word_embeddings,
        # MoE: d_mlp is the width of one expert.
        "d_mlp": hf_config.moe_intermediate_size,
        "num_experts": hf_config.num_experts,
        "experts_per_token": hf_config.num_experts_per_tok,
        "norm_topk_prob": bool(hf_config.norm_topk_prob),
    }
    return cfg_dict


def moe_checkpoint(name: str, loading, repos: dict[str, str]) -> tuple[str, str] | None:
    """``(name to load by, architecture)`` if ``name`` is a checkpoint this part handles, else
    None: a local directory whose config names one of ``repos``'s architectures, or a registered
    repo id (or alias) in ``repos`` (repo id -> architecture)."""
    if (Path(name) / "config.json").is_file():
        arch = local_checkpoint_architecture(name)
        return (name, arch) if arch in set(repos.values()) else None
    try:
        official = loading.get_official_model_name(name)
    except Exception:  # noqa: BLE001 - not a known name: not ours
        return None
    return (official, repos[official]) if official in repos else None


def upstream_supports(convert_hf_model_config, architecture: str, model_type: str) -> bool:
    """Probe: does upstream's config conversion already know ``architecture``?"""
    with tempfile.TemporaryDirectory(prefix="moe-probe-") as d:
        (Path(d) / "config.json").write_text(json.dumps(
            {"architectures": [architecture], "model_type": model_type, "num_hidden_layers": 1}))
        try:
            cfg = convert_hf_model_config(d)
        except Exception:  # noqa: BLE001 - NotImplementedError today; any failure = unsupported
            return False
        return cfg.get("original_architecture") == architecture


def _model_type(family) -> str:
    """``config.json``'s ``model_type`` of a family, from its ``transformers`` config class."""
    import transformers
    return getattr(transformers, family.hf_config_class).model_type


# --- the MoE block -----------------------------------------------------------------------------
# moe_classes()'s body, less its return, is also the upstream patch's addition to TL's
# components/mlps/moe.py (imports merged into that file's), so it must stay valid at module level.
@functools.cache
def moe_classes():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.nn.utils import skip_init
    from transformer_lens.components.mlps.can_be_used_as_mlp import CanBeUsedAsMLP
    from transformer_lens.factories.activation_function_factory import (
        ActivationFunctionFactory,
    )
    from transformer_lens.hook_points import HookPoint

    def _linear(cfg, d_in, d_out):
        # cfg.dtype (TL's MoE makes fp32 experts whatever the dtype); no random init: the
        # weights are loaded (TL's init_weights still reaches them by their "W_" names).
        return skip_init(nn.Linear, d_in, d_out, bias=False, dtype=cfg.dtype)

    class Qwen3MoEExpert(nn.Module):
        """One expert, HF ``Qwen3MoeMLP``: ``W_out(silu(W_gate x) * W_in x)``; parameters and
        hooks as TL's ``MoEGatedMLP``, plus ``hook_out``.

        Hooks, on the tokens routed to this expert only (as HF calls the expert module):
        ``hook_gate``, ``hook_pre``, ``hook_post`` [n_routed, d_mlp] and ``hook_out``
        [n_routed, d_model], the expert's output before its routing weight."""

        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            self.W_gate = _linear(cfg, cfg.d_model, cfg.d_mlp)
            self.W_in = _linear(cfg, cfg.d_model, cfg.d_mlp)
            self.W_out = _linear(cfg, cfg.d_mlp, cfg.d_model)
            self.act_fn = ActivationFunctionFactory.pick_activation_function(cfg)
            self.hook_gate = HookPoint()
            self.hook_pre = HookPoint()
            self.hook_post = HookPoint()
            self.hook_out = HookPoint()

        def forward(self, x):
            gate = self.hook_gate(self.W_gate(x))
            pre = self.hook_pre(self.W_in(x))
            post = self.hook_post(self.act_fn(gate) * pre)
            return self.hook_out(self.W_out(post))

    class Qwen3MoE(CanBeUsedAsMLP):
        """HF ``Qwen3MoeSparseMoeBlock`` with hook points. Parameter names are those of TL's
        ``MoE`` (``W_gate.weight``, ``experts.{e}.W_in|W_gate|W_out.weight``).

        Hooks: ``hook_router_logits`` [batch, pos, n_experts] (HF ``router_logits``, which HF
        flattens to [batch*pos, n_experts]); ``hook_expert_indices`` and ``hook_expert_weights``
        [batch, pos, k]: the chosen experts and the weights actually applied (after
        ``norm_topk_prob``); editing them changes the routing."""

        def __init__(self, cfg):
            super().__init__(cfg)
            self.num_experts = cfg.num_experts
            self.experts_per_token = cfg.experts_per_token
            self.norm_topk_prob = cfg.norm_topk_prob
            self.W_gate = _linear(cfg, cfg.d_model, cfg.num_experts)
            self.experts = nn.ModuleList([Qwen3MoEExpert(cfg) for _ in range(cfg.num_experts)])
            self.hook_router_logits = HookPoint()
            self.hook_expert_indices = HookPoint()
            self.hook_expert_weights = HookPoint()

        def forward(self, x):
            batch, pos, d_model = x.shape
            router_logits = self.hook_router_logits(self.W_gate(x))
            weights = F.softmax(router_logits, dim=-1, dtype=torch.float)
            weights, indices = torch.topk(weights, self.experts_per_token, dim=-1)
            if self.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
            indices = self.hook_expert_indices(indices)
            weights = self.hook_expert_weights(weights.to(x.dtype))

            flat_x = x.reshape(-1, d_model)
            flat_idx = indices.reshape(-1, self.experts_per_token)
            flat_w = weights.reshape(-1, self.experts_per_token)
            out = torch.zeros_like(flat_x)
            # [n_experts, k, tokens]; same token order per expert as HF (so hook_out rows match)
            mask = F.one_hot(flat_idx, num_classes=self.num_experts).permute(2, 1, 0)
            for e in torch.nonzero(mask.sum(dim=(1, 2))).flatten().tolist():
                slot, token = torch.where(mask[e])
                y = self.experts[e](flat_x[token]) * flat_w[token, slot, None]
                out.index_add_(0, token, y.to(x.dtype))
            return out.reshape(batch, pos, d_model)

    return Qwen3MoEExpert, Qwen3MoE


def mlp_factory_class(upstream_factory, archs: frozenset[str]):
    """A subclass of TL's ``MLPFactory`` that builds :class:`Qwen3MoE` for configs of ``archs``."""

    class Qwen3MoeAwareMLPFactory(upstream_factory):
        @staticmethod
        def create_mlp(cfg):
            if cfg.original_architecture in archs:
                return moe_classes()[1](cfg)
            return upstream_factory.create_mlp(cfg)

    return Qwen3MoeAwareMLPFactory


# --- weights -----------------------------------------------------------------------------------
# Also upstream's convert_qwen3_moe_weights, verbatim but for the imports (hoisted there).
def convert_qwen3_moe_weights(hf_model, cfg) -> dict[str, torch.Tensor]:
    """HF ``Qwen3MoeForCausalLM`` -> HookedTransformer state dict.

    Attention, norms and embeddings as TL's ``convert_qwen3_weights``. Router and expert weights
    are the HF tensors themselves, not copies: HF ``nn.Linear`` weights are [out, in], as are the
    TL experts' ``nn.Linear`` weights."""
    import einops
    import torch

    n_kv = cfg.n_key_value_heads or cfg.n_heads
    kv = "_" if cfg.n_key_value_heads is not None else ""  # GQA stores K/V as _W_K/_W_V

    def zeros(*shape):
        return torch.zeros(*shape, dtype=cfg.dtype)

    sd = {"embed.W_E": hf_model.model.embed_tokens.weight}
    for l, layer in enumerate(hf_model.model.layers):
        attn, moe, b = layer.self_attn, layer.mlp, f"blocks.{l}."
        if not hasattr(moe, "experts"):  # config conversion refuses such models; be explicit
            raise NotImplementedError(f"layer {l} has a dense MLP")
        sd[b + "ln1.w"] = layer.input_layernorm.weight
        sd[b + "attn.W_Q"] = einops.rearrange(attn.q_proj.weight, "(n h) m->n m h", n=cfg.n_heads)
        sd[b + f"attn.{kv}W_K"] = einops.rearrange(attn.k_proj.weight, "(n h) m->n m h", n=n_kv)
        sd[b + f"attn.{kv}W_V"] = einops.rearrange(attn.v_proj.weight, "(n h) m->n m h", n=n_kv)
        sd[b + "attn.q_norm.w"] = attn.q_norm.weight
        sd[b + "attn.k_norm.w"] = attn.k_norm.weight
        sd[b + "attn.b_Q"] = zeros(cfg.n_heads, cfg.d_head)
        sd[b + f"attn.{kv}b_K"] = zeros(n_kv, cfg.d_head)
        sd[b + f"attn.{kv}b_V"] = zeros(n_kv, cfg.d_head)
        sd[b + "attn.W_O"] = einops.rearrange(attn.o_proj.weight, "m (n h)->n h m", n=cfg.n_heads)
        sd[b + "attn.b_O"] = zeros(cfg.d_model)
        sd[b + "ln2.w"] = layer.post_attention_layernorm.weight
        sd[b + "mlp.W_gate.weight"] = moe.gate.weight
        for e, expert in enumerate(moe.experts):
            sd[b + f"mlp.experts.{e}.W_gate.weight"] = expert.gate_proj.weight
            sd[b + f"mlp.experts.{e}.W_in.weight"] = expert.up_proj.weight
            sd[b + f"mlp.experts.{e}.W_out.weight"] = expert.down_proj.weight
    sd["ln_final.w"] = hf_model.model.norm.weight
    sd["unembed.W_U"] = hf_model.lm_head.weight.T
    sd["unembed.b_U"] = zeros(cfg.d_vocab)
    return sd


def load_hf_model(name: str, dtype: torch.dtype, loading, **kwargs):
    """The HF model for ``name`` as upstream's ``get_pretrained_state_dict`` loads it."""
    from transformers import AutoModelForCausalLM
    name = (str(Path(name).resolve()) if Path(name).exists()
            else loading.get_official_model_name(name))
    token = os.environ.get("HF_TOKEN") or None
    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, token=token, **kwargs)


def load_experts_(model, state_dict: dict[str, torch.Tensor], fold_ln: bool) -> set[str]:
    """Copy router and expert weights into ``model``, removing them from ``state_dict`` one at a
    time (each HF tensor is freed as soon as it is copied). With ``fold_ln``, each layer's ln2
    gain is folded into them (exact: RMSNorm's gain scales the inputs of the router and of every
    expert's W_in/W_gate) and ``blocks.{l}.ln2.w`` is removed. Returns the keys loaded."""
    import torch
    params = dict(model.named_parameters())
    keys = [k for k in state_dict if ".mlp.experts." in k or k.endswith(".mlp.W_gate.weight")]
    gains = ({l: state_dict.pop(f"blocks.{l}.ln2.w").float() for l in range(model.cfg.n_layers)}
             if fold_ln else {})
    with torch.no_grad():
        for k in keys:
            w = state_dict.pop(k)
            if fold_ln and not k.endswith("W_out.weight"):  # in fp32, as TL's processing
                w = w.float() * gains[int(k.split(".")[1])][None, :]
            params[k].copy_(w)
    return set(keys)


def load_and_process_state_dict(model, original, state_dict, fold_ln=True,
                                center_writing_weights=True, center_unembed=True,
                                fold_value_biases=True, refactor_factored_attn_matrices=False):
    """``HookedTransformer.load_and_process_state_dict`` for Qwen3-MoE.

    Expert and router weights are loaded first, outside TL's processing (which would clone or
    upcast every one of them). TL skips ``fold_ln`` for every MoE model, yet ``from_pretrained``
    has already built the model with weightless RMSNormPre norms, so the gains would be lost;
    here they are folded as for dense Qwen3: ln1 into attention, ln2 into router and experts,
    ln_final into the unembedding."""
    from transformer_lens import loading_from_pretrained as loading
    from transformer_lens.components import RMSNormPre
    from transformer_lens.weight_processing import ProcessWeights

    fold_ln = fold_ln and model.cfg.normalization_type in ("RMS", "RMSPre")
    loaded = load_experts_(model, state_dict, fold_ln)
    if fold_ln:
        state_dict = ProcessWeights.fold_layer_norm(state_dict, model.cfg, fold_biases=False,
                                                    center_weights=False)
        if model.cfg.normalization_type == "RMS":  # as TL does when it folds
            model.cfg.normalization_type = "RMSPre"
            model.ln_final = RMSNormPre(model.cfg)
            for block in model.blocks:
                block.ln1, block.ln2 = RMSNormPre(model.cfg), RMSNormPre(model.cfg)
    own = model.state_dict()

    # TL would re-add the loaded keys as "missing" and process_weights would then upcast a copy
    # of each: present them to fill_missing_keys, then take them out again.
    def fill_missing_keys(sd):
        sd.update((k, own[k]) for k in loaded)
        sd = loading.fill_missing_keys(model, sd)
        for k in loaded:
            del sd[k]
        return sd

    model.fill_missing_keys = fill_missing_keys  # instance attribute, removed below
    try:
        original(model, state_dict, fold_ln=False, center_writing_weights=center_writing_weights,
                 center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                 refactor_factored_attn_matrices=refactor_factored_attn_matrices)
    finally:
        del model.fill_missing_keys
    if fold_ln:
        model.setup()  # as TL after folding: refresh the hook dict


# --- the part ----------------------------------------------------------------------------------
def apply(patches: PatchSet, registry: Any) -> str:
    """Patch TL (through ``patches``) so that ``HookedTransformer.from_pretrained`` loads the
    checkpoints of the ``TL_MOE`` families: their registered repo ids and local directories.
    Stands down for each family whose architecture upstream's config conversion already knows."""
    import transformer_lens.loading_from_pretrained as loading

    families = {arch: model_families(registry)[arch] for arch in needed(registry, TL_MOE)}
    upstream = sorted(arch for arch, f in families.items()
                      if upstream_supports(loading.convert_hf_model_config, arch, _model_type(f)))
    archs = frozenset(families) - set(upstream)
    if not archs:
        raise AlreadyUpstream(f"{', '.join(upstream)}: upstream HookedTransformer supports it")
    repos = {spec.repo_id: spec.architecture for spec in models(registry, TL_MOE)
             if spec.architecture in archs}
    _install(patches, loading, archs, repos)
    added = (f"{', '.join(sorted(archs))}: HookedTransformer config, MoE block (router/expert "
             "hooks) and weight conversion added")
    if upstream:
        return f"{added}; {', '.join(upstream)}: upstream HookedTransformer supports it"
    return added


def _install(patches: PatchSet, loading, archs: frozenset[str], repos: dict[str, str]) -> None:
    import torch
    from transformer_lens import HookedTransformer
    from transformer_lens.components import transformer_block

    original_config = loading.convert_hf_model_config

    @functools.wraps(original_config)
    def convert_hf_model_config(model_name: str, **kwargs):
        found = moe_checkpoint(model_name, loading, repos)
        if found is None:
            return original_config(model_name, **kwargs)
        name, architecture = found
        from transformers import AutoConfig
        hf_config = AutoConfig.from_pretrained(name, token=os.environ.get("HF_TOKEN") or None,
                                               **kwargs)
        cfg = hooked_transformer_config(hf_config, name)
        cfg["original_architecture"] = architecture
        cfg["tokenizer_name"] = name
        if kwargs.get("trust_remote_code", False):
            cfg["trust_remote_code"] = True
        return cfg

    original_state_dict = loading.get_pretrained_state_dict

    @functools.wraps(original_state_dict)
    def get_pretrained_state_dict(official_model_name, cfg, hf_model=None,
                                  dtype=torch.float32, **kwargs):
        if cfg.original_architecture not in archs:
            return original_state_dict(official_model_name, cfg, hf_model, dtype=dtype, **kwargs)
        if "torch_dtype" in kwargs:  # as upstream: torch_dtype wins over dtype
            dtype = kwargs.pop("torch_dtype")
        if hf_model is None:
            hf_model = load_hf_model(official_model_name, dtype, loading, **kwargs)
            hf_model.requires_grad_(False)
        # The HF model goes out of scope on return: its tensors live on only in the state dict.
        return convert_qwen3_moe_weights(hf_model, cfg)

    original_load = HookedTransformer.load_and_process_state_dict

    @functools.wraps(original_load)
    def load_and_process(self, state_dict, *args, **kwargs):
        if self.cfg.original_architecture not in archs:
            return original_load(self, state_dict, *args, **kwargs)
        return load_and_process_state_dict(self, original_load, state_dict, *args, **kwargs)

    patches.setattr(loading, "convert_hf_model_config", convert_hf_model_config)
    patches.setattr(loading, "get_pretrained_state_dict", get_pretrained_state_dict)
    patches.setattr(transformer_block, "MLPFactory",
                    mlp_factory_class(transformer_block.MLPFactory, archs))
    patches.setattr(HookedTransformer, "load_and_process_state_dict", load_and_process)
