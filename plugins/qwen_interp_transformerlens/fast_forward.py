"""Part ``fast-forward``: a faster ``HookedTransformer`` forward for Qwen3 models, same hooks.

TransformerLens 3.2.1's forward on Qwen3 does work HF's does not: every block normalises its
input three times (``ln1`` for queries, keys and values) and adds ``0.0`` to two of them; the
attention materialises the (batch, heads, pos, pos) scores and pattern with several full passes
over them (scale, mask, softmax, NaN scrub) after ``repeat_interleave``-ing K and V to every
query head; the MLP and unembedding copy their weight matrices (``W.T.contiguous()``) on every
call, the unembedding's being vocab x d_model.

For models whose ``cfg.original_architecture`` is that of a family declaring ``TL_FAST_FORWARD``
(Qwen3 layout: dense or MoE), on one CPU/CUDA device, this module replaces, per call and only
where nothing observable changes:

- ``TransformerBlock.forward``: ``ln1`` runs once, its output feeds Q, K and V. Taken only when
  neither ``ln1`` nor its hook points (``hook_scale``, ``hook_normalized``) carry a hook (they
  would fire three times upstream) and the attention module has no forward pre-hook.
- ``AbstractAttention.forward``: ``scaled_dot_product_attention`` (causal, GQA without
  repeating K/V, no pattern in memory) between the hooked Q/K/V/rotary and ``hook_z``. It skips
  exactly two hook points, ``hook_attn_scores`` and ``hook_pattern``, so it is taken only when
  neither has any forward/backward (pre-)hook; ``run_with_cache``, ``run_with_hooks``,
  ``model.hooks`` and permanent hooks (circuit-tracer's ``stop_gradient`` on ``hook_pattern``)
  all add one, so those calls run upstream's code. Every other hook point fires with the same
  shape as upstream: ``hook_q/k/v``, ``q_norm``/``k_norm`` hooks, ``hook_rot_q/k``, ``hook_z``.
  Also upstream for: a KV cache, an attention mask (left padding), additive masks, soft caps,
  local attention, ``use_attn_result``, split QKV inputs, 4-bit weights.
- ``GatedMLP.forward`` and ``Unembed.forward``: the same ``F.linear`` calls on transposed
  *views* of the weights instead of per-call contiguous copies (all hooks fire unchanged).
- The rotary rotation: ``cat(-x2, x1)`` instead of clone + two slice writes, and no final
  ``cat`` when the whole head is rotated (bit-identical values).

Nothing is cached, so parameter edits take effect at once. In fp32 the results equal upstream's
to rounding (kernels sum in another order); in bf16 the fused attention keeps its softmax in
fp32 (as HF does) where upstream's is bf16. Any global ``torch.nn.Module`` hook makes every
part fall back. ``QWEN_INTERP_FAST_FORWARD=0`` (read at each call) selects upstream's code.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from qwen_interp import settings
from qwen_interp.patching import PatchSet
from qwen_interp.specs import TL_FAST_FORWARD

from .families import needed

ENV = settings.FAST_FORWARD.name
# How often each part took the fast path or upstream's ("attention:fast", ...): for tests.
counts: Counter = Counter()


def enabled() -> bool:
    return settings.FAST_FORWARD.get()


def _hooked(module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or module._backward_hooks or module._backward_pre_hooks)


def _global_hooks() -> bool:
    # Global module hooks fire on every HookPoint: skipping one would be visible.
    import torch.nn.modules.module as m
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks
                or m._global_backward_hooks or m._global_backward_pre_hooks)


def _applies(cfg, device, archs: frozenset[str]) -> bool:
    return (enabled() and cfg.original_architecture in archs and cfg.n_devices == 1
            and not cfg.load_in_4bit and device.type in ("cpu", "cuda") and not _global_hooks())


# --- block: ln1 once -----------------------------------------------------------------------------
def _block_ok(block, resid_pre, shortformer_pos_embed, archs: frozenset[str]) -> bool:
    cfg = block.cfg
    return (_applies(cfg, resid_pre.device, archs) and shortformer_pos_embed is None
            and not (cfg.use_attn_in or cfg.use_split_qkv_input or cfg.attn_only
                     or cfg.parallel_attn_mlp or cfg.use_normalization_before_and_after)
            and not any(_hooked(m) for m in block.ln1.modules())
            and not block.attn._forward_pre_hooks)


def _block_forward(block, resid_pre, past_kv_cache_entry, attention_mask):
    """Upstream's ``TransformerBlock.forward`` for this config, with one ``ln1`` call (upstream
    passes ``ln1(x) + 0.0`` twice and ``ln1(x)``: the same values)."""
    resid_pre = block.hook_resid_pre(resid_pre)
    x = block.ln1(resid_pre)
    attn_out = block.hook_attn_out(block.attn(
        query_input=x, key_input=x, value_input=x,
        past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask))
    resid_mid = block.hook_resid_mid(resid_pre + attn_out)
    mlp_in = resid_mid if not block.cfg.use_hook_mlp_in else block.hook_mlp_in(resid_mid.clone())
    mlp_out = block.apply_mlp(block.ln2(mlp_in))
    return block.hook_resid_post(resid_mid + mlp_out)


# --- attention: fused SDPA -----------------------------------------------------------------------
def _attention_ok(attn, query_input, past_kv_cache_entry, extra, archs: frozenset[str]) -> bool:
    cfg = attn.cfg
    return (_applies(cfg, query_input.device, archs) and past_kv_cache_entry is None
            and all(v is None for v in extra) and query_input.dim() == 3
            and cfg.attention_dir == "causal" and cfg.positional_embedding_type == "rotary"
            and not cfg.rotary_adjacent_pairs and attn.attn_type == "global"
            and not cfg.attn_scores_soft_cap > 0 and not cfg.use_attn_result
            and not _hooked(attn.hook_attn_scores) and not _hooked(attn.hook_pattern))


def _rotary(attn, x):
    """``apply_rotary`` without a cache or mask (GPT-NeoX halves), same values."""
    import torch
    if x.device != attn.rotary_sin.device:
        x = x.to(attn.rotary_sin.device)
    pos, r = x.size(1), attn.cfg.rotary_dim
    if pos > attn.rotary_cos.shape[0]:
        attn._extend_rotary_embeddings(pos)
    cos = attn.rotary_cos[None, :pos, None, :]
    sin = attn.rotary_sin[None, :pos, None, :]
    x_rot = x[..., :r]
    x_flip = torch.cat((-x_rot[..., r // 2:], x_rot[..., :r // 2]), dim=-1)
    out = x_rot * cos + x_flip * sin
    return out if r == x.size(-1) else torch.cat([out, x[..., r:]], dim=-1)


def _native_gqa(q) -> bool:
    """Whether SDPA's ``enable_gqa`` reaches a fused kernel: on CUDA only flash attention takes
    it (fp16/bf16, head_dim <= 256); any other CUDA backend would fall back to the slow math
    kernel, so there K/V are repeated first. The CPU kernels take it (torch >= 2.5)."""
    import torch
    import torch.nn.functional as F
    if "enable_gqa" not in (F.scaled_dot_product_attention.__doc__ or ""):
        return False
    if q.device.type != "cuda":
        return True
    return (q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256
            and torch.backends.cuda.flash_sdp_enabled())


def _sdpa(q, k, v, scale):
    """z [batch, pos, head, d_head] from q [.., head, ..] and k/v [.., kv_head, ..], causal."""
    import torch.nn.functional as F
    q, k, v = (t.to(v.dtype).transpose(1, 2) for t in (q, k, v))
    kw = {}
    if k.shape[1] != q.shape[1]:
        if _native_gqa(q):
            kw["enable_gqa"] = True
        else:  # repeat K/V per query head as upstream does
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **kw)
    return z.transpose(1, 2)


def _attention_forward(attn, query_input, key_input, value_input):
    import torch.nn.functional as F
    q, k, v = attn.calculate_qkv_matrices(query_input, key_input, value_input)
    q = attn.hook_rot_q(_rotary(attn, q))
    k = attn.hook_rot_k(_rotary(attn, k))
    z = attn.hook_z(_sdpa(q, k, v, 1.0 / attn.attn_scale))
    W_O, b_O = attn.W_O, attn.b_O
    if W_O.device != z.device:
        W_O, b_O = W_O.to(z.device), b_O.to(z.device)
    z = z.to(W_O.dtype).reshape(z.shape[0], z.shape[1], -1)
    # W_O [head, d_head, d_model] viewed as [(head d_head), d_model]: no per-call copy.
    return F.linear(z, W_O.reshape(-1, W_O.shape[-1]).T, b_O)


# --- MLP and unembed: no weight copies -----------------------------------------------------------
def _mlp_forward(mlp, x):
    import torch.nn.functional as F
    if mlp.W_gate.device != x.device:
        x = x.to(mlp.W_gate.device)
    pre_act = mlp.hook_pre(F.linear(x, mlp.W_gate.T))
    pre_linear = mlp.hook_pre_linear(F.linear(x, mlp.W_in.T))
    post_act = mlp.hook_post(mlp.act_fn(pre_act) * pre_linear + mlp.b_in)
    return F.linear(post_act, mlp.W_out.T, mlp.b_out)


# --- the part ------------------------------------------------------------------------------------
def _own(cls, name):
    """``cls.__dict__[name]`` (what undo must put back), asserting it is defined there."""
    assert name in cls.__dict__, f"{cls.__name__}.{name} is inherited: cannot patch it exactly"
    return cls.__dict__[name]


def _tally(part: str, fast: bool) -> None:
    counts[f"{part}:{'fast' if fast else 'upstream'}"] += 1


def apply(patches: PatchSet, registry: Any) -> str:
    import functools

    from transformer_lens.components import AbstractAttention, TransformerBlock, Unembed
    from transformer_lens.components.mlps.gated_mlp import GatedMLP

    archs = needed(registry, TL_FAST_FORWARD)

    block_up = _own(TransformerBlock, "forward")

    @functools.wraps(block_up)
    def block_forward(self, resid_pre, shortformer_pos_embed=None, past_kv_cache_entry=None,
                      attention_mask=None):
        fast = _block_ok(self, resid_pre, shortformer_pos_embed, archs)
        _tally("block", fast)
        if fast:
            return _block_forward(self, resid_pre, past_kv_cache_entry, attention_mask)
        return block_up(self, resid_pre, shortformer_pos_embed=shortformer_pos_embed,
                        past_kv_cache_entry=past_kv_cache_entry, attention_mask=attention_mask)

    attn_up = _own(AbstractAttention, "forward")

    @functools.wraps(attn_up)
    def attention_forward(self, query_input, key_input, value_input, past_kv_cache_entry=None,
                          additive_attention_mask=None, attention_mask=None, position_bias=None):
        fast = _attention_ok(self, query_input, past_kv_cache_entry,
                             (additive_attention_mask, attention_mask, position_bias), archs)
        _tally("attention", fast)
        if fast:
            return _attention_forward(self, query_input, key_input, value_input)
        return attn_up(self, query_input, key_input, value_input,
                       past_kv_cache_entry=past_kv_cache_entry,
                       additive_attention_mask=additive_attention_mask,
                       attention_mask=attention_mask, position_bias=position_bias)

    mlp_up = _own(GatedMLP, "forward")

    @functools.wraps(mlp_up)
    def mlp_forward(self, x):
        fast = _applies(self.cfg, x.device, archs) and not self.cfg.is_layer_norm_activation()
        _tally("mlp", fast)
        return _mlp_forward(self, x) if fast else mlp_up(self, x)

    unembed_up = _own(Unembed, "forward")

    @functools.wraps(unembed_up)
    def unembed_forward(self, residual):
        import torch.nn.functional as F
        if not _applies(self.cfg, residual.device, archs):
            return unembed_up(self, residual)
        residual = self.hook_in(residual)
        return self.hook_out(F.linear(residual, self.W_U.T, self.b_U))

    for cls, fn, up in ((TransformerBlock, block_forward, block_up),
                        (AbstractAttention, attention_forward, attn_up),
                        (GatedMLP, mlp_forward, mlp_up), (Unembed, unembed_forward, unembed_up)):
        patches.setattr(cls, "forward", fn, restore=up)
    return (f"{', '.join(sorted(archs))}: ln1 once, fused causal GQA attention while "
            f"hook_attn_scores/hook_pattern are unhooked, no per-call weight copies; default, "
            f"{ENV}=0 for upstream's")
