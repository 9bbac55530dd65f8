"""Feature groups on an attribution graph: where their nodes sit in circuit-tracer's adjacency
matrix, how strongly each group drives the others and the target logit, and their influence.

circuit-tracer's ``Graph.adjacency_matrix`` is indexed ``[target, source]`` over the nodes in this
order: the selected features (``graph.selected_features`` into ``graph.active_features``, rows
(layer, position, feature)), one error node per (layer, position), one token node per position,
then the logit nodes (``graph.logit_targets``). An entry is the direct effect of the source on the
target (circuit-tracer's ``graph.py``).
"""

from __future__ import annotations

from typing import Any


def feature_index(graph) -> dict[tuple[int, int, int], int]:
    """(layer, position, feature) -> its row/column in the adjacency matrix."""
    from .groups import graph_feature_nodes  # in adjacency order
    return {node.key: i for i, node in enumerate(graph_feature_nodes(graph))}


def logit_index(graph, token_id: int) -> int | None:
    """The adjacency row of the logit node for ``token_id``; None when it is not a target."""
    n = graph.adjacency_matrix.shape[0]
    targets = list(graph.logit_targets)
    for i, target in enumerate(targets):
        if int(getattr(target, "vocab_idx", target)) == int(token_id):
            return n - len(targets) + i
    return None


def group_summary(graph, groups, target_id: int | None) -> dict[str, Any]:
    """Per group its total influence on the logits; between groups, and from each group to the
    target logit, the summed direct effects (signed). Nodes not in the graph (e.g. SAE features,
    or CLT features pruned away) are skipped."""
    from .autogroup import node_influence
    index = feature_index(graph)
    influence = node_influence(graph)
    adjacency = graph.adjacency_matrix
    members = {g.name: [index[key] for key in
                        ((n.layer, n.position, n.feature) for n in g.nodes
                         if getattr(n, "dictionary", "clt") == "clt") if key in index]
               for g in groups}
    target_row = logit_index(graph, target_id) if target_id is not None else None
    edges = []
    for src, src_rows in members.items():
        if not src_rows:
            continue
        for dst, dst_rows in members.items():
            if dst == src or not dst_rows:
                continue
            weight = float(adjacency[dst_rows][:, src_rows].sum())
            if weight != 0.0:
                edges.append({"source": src, "target": dst, "weight": weight})
        if target_row is not None:
            edges.append({"source": src, "target": "target",
                          "weight": float(adjacency[target_row, src_rows].sum())})
    return {"influence": {name: float(influence[rows].sum()) if rows else 0.0
                          for name, rows in members.items()},
            "edges": edges}
