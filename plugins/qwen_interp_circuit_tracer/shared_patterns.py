"""One attention pattern per layer in attribution's forward pass, not one per batch row.

attribute() runs the prompt expanded to ``batch_size`` identical rows, with attention patterns
frozen (detached). TransformerLens then computes scores, mask, softmax and pattern for every row
(several (batch, heads, query, key) temporaries: 2 GB each at batch 64 x 1,000 tokens for
Qwen3-1.7B) and ``pattern @ v`` keeps a (batch x heads, query, key) pattern per layer for the
backward pass. Within this context each attention layer computes the scores of row 0 only (so
``hook_attn_scores`` and ``hook_pattern`` see a batch of one) and applies that pattern to every
row's V with one bmm per KV head, so autograd keeps (heads, query, key) per layer. Exact only
because the rows are identical and the pattern is detached, as in attribution.
"""

from __future__ import annotations

import contextlib

import torch


def row0_scores(attn):
    """``calculate_attention_scores`` of the first row only (every row is the same prompt)."""
    upstream = attn.calculate_attention_scores

    def calculate_attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return upstream(q[:1], k[:1])

    return calculate_attention_scores


def shared_pattern_z(attn):
    """``calculate_z_scores`` for a batch whose rows are one prompt repeated."""

    def calculate_z_scores(v: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
        batch, key_pos, n_v, d_head = v.shape  # n_v: KV heads (GQA) or all heads
        n_heads, query_pos = pattern.shape[1], pattern.shape[2]
        group = n_heads // n_v  # query head h reads KV head h // group (repeat_interleave)
        p = pattern[0].reshape(n_v, group * query_pos, key_pos).clone()  # own storage
        v_ = v.permute(2, 1, 0, 3).reshape(n_v, key_pos, batch * d_head)
        z = torch.bmm(p, v_).view(n_v, group, query_pos, batch, d_head)
        return attn.hook_z(z.permute(3, 2, 0, 1, 4).reshape(batch, query_pos, n_heads, d_head))

    return calculate_z_scores


def reproduces_z(attn) -> bool:
    """``shared_pattern_z`` is TransformerLens's own ``calculate_z_scores`` (AbstractAttention's,
    and GroupedQueryAttention's repeat of the KV heads) on a shared pattern; an attention class
    or instance with its own z computation keeps it."""
    from transformer_lens.components import AbstractAttention, GroupedQueryAttention
    return "calculate_z_scores" not in vars(attn) and type(attn).calculate_z_scores in (
        AbstractAttention.calculate_z_scores, GroupedQueryAttention.calculate_z_scores)


@contextlib.contextmanager
def shared_attention_patterns(blocks):
    """Within the context, every ``block.attn`` of ``blocks`` whose z computation is
    TransformerLens's own uses ``row0_scores`` and ``shared_pattern_z``; others run as before."""
    attns = [block.attn for block in blocks if reproduces_z(block.attn)]
    for attn in attns:
        attn.calculate_attention_scores = row0_scores(attn)
        attn.calculate_z_scores = shared_pattern_z(attn)
    try:
        yield
    finally:
        for attn in attns:
            del attn.calculate_attention_scores, attn.calculate_z_scores
