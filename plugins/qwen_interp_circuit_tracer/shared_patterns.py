"""One attention pattern per layer in attribution's forward pass, not one per batch row.

attribute() runs the prompt expanded to ``batch_size`` identical rows, with attention patterns
frozen (detached). TransformerLens's ``pattern @ v`` then keeps a (batch x heads, query, key)
pattern per layer for the backward pass: 1 GB per layer at batch 32 x 1,000 tokens for
Qwen3-1.7B. Within this context each attention layer applies row 0's pattern to every row's V
with one bmm per KV head, so autograd keeps (heads, query, key) per layer.
"""

from __future__ import annotations

import contextlib

import torch


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


@contextlib.contextmanager
def shared_attention_patterns(blocks):
    """Within the context, every ``block.attn`` of ``blocks`` uses ``shared_pattern_z``."""
    attns = [block.attn for block in blocks]
    for attn in attns:
        attn.calculate_z_scores = shared_pattern_z(attn)
    try:
        yield
    finally:
        for attn in attns:
            del attn.calculate_z_scores
