"""``compute_partial_influences`` without a device copy of the whole edge matrix.

circuit-tracer 0.5 copies ``edge_matrix[:rows]`` (rows x every node, fp32) to the GPU at each
ranking update: 1.6 GB for the seed prompt, ~74 GB for a 1,000-token prompt with ~80 active
features per layer and token. Influence only propagates through nodes that have rows (logits
and visited features), so the power iteration runs on the rows x rows block, and the full row
of influences is one product (sum of the iterates) @ normalized matrix. The edge matrix is read
in contiguous row blocks of at most ``workspace_bytes``. Entries of the normalized matrix are
upstream's (|e| / row sum); only the order of the final sums differs.

Rows are never rewritten once attribute() has stored them, so a caller ranking the same growing
matrix repeatedly may pass one ``row_sum_cache`` dict to every call: each row is summed once.
"""

from __future__ import annotations

import torch

DEFAULT_WORKSPACE_BYTES = 256 * 2**20


def compute_partial_influences(edge_matrix: torch.Tensor, logit_p: torch.Tensor,
                               row_to_node_index: torch.Tensor, max_iter: int = 128,
                               device=None, workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
                               row_sum_cache: dict | None = None):
    """Same result and contract as ``circuit_tracer.graph.compute_partial_influences``."""
    if device is None:
        from circuit_tracer.utils import get_default_device
        device = get_default_device()
    n_rows, n_cols = edge_matrix.shape
    step = max(1, workspace_bytes // max(1, n_cols * 4))  # rows per block

    def abs_rows(r0: int, r1: int) -> torch.Tensor:
        return edge_matrix[r0:r1].to(device, torch.float32).abs()

    cache = row_sum_cache if row_sum_cache is not None else {}
    known = cache.get("sums", torch.zeros(0, device=device))[:n_rows]
    sums = [known] + [abs_rows(r0, min(r0 + step, n_rows)).sum(dim=1)
                      for r0 in range(len(known), n_rows, step)]
    raw_sums = torch.cat(sums)
    cache["sums"] = raw_sums
    has_out_edges = raw_sums > 0  # upstream's product is nonzero iff x hits such a row
    row_sums = raw_sums.clamp(min=1e-8)

    rows = row_to_node_index.long()
    square = edge_matrix[:, rows.to(edge_matrix.device)].to(device, torch.float32).abs()
    square /= row_sums[:, None]  # propagation among the nodes that have rows
    start = torch.zeros(n_cols, device=device)
    start[-len(logit_p):] = logit_p
    x = start[rows.to(device)]
    total = torch.zeros(n_rows, device=device)
    for _ in range(max_iter):
        if not ((x != 0) & has_out_edges).any():
            break
        total += x
        x = x @ square
    else:
        raise RuntimeError("Failed to converge")

    influences = torch.zeros(n_cols, device=device)
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        influences += total[r0:r1] @ (abs_rows(r0, r1) / row_sums[r0:r1, None])
    return influences
