"""Node labels: the layer mix of a node's features and, given feature statistics, its top tokens.

Top tokens: the tokens at which a node's features are most active, i.e. the activating token
(``tokens[train_token_ind]``) of each top example in the feature records of a
``qwen-interp features compute`` run (docs/feature-sidecar.md), counted over up to ``sample``
members per node (spread evenly over the node), the most frequent first. Records are read one
range each through the Explorer's :class:`~qwen_interp.apps.explorer.store.FeatureStore`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .build import TopologyMap


def layer_mix(tmap: TopologyMap, members: np.ndarray) -> dict[str, int]:
    v = tmap.vectors
    slots = np.bincount(members // v.width, minlength=len(v.layers))
    return {str(v.layers[i]): int(c) for i, c in enumerate(slots) if c}


def _activating_tokens(record: dict) -> list[str]:
    out = []
    for group in record.get("examples_quantiles") or []:
        if group.get("quantile_name") != "Top activations":
            continue
        for ex in group.get("examples") or []:
            tokens, at = ex.get("tokens") or [], ex.get("train_token_ind", -1)
            if 0 <= at < len(tokens):
                out.append(tokens[at])
    return out


def label_nodes(tmap: TopologyMap, store=None, *, sample: int = 16, top: int = 5) -> None:
    """Fill ``tmap.labels``: per level, per node, ``{layers, dominant_layer, top_tokens,
    label}``. ``store``: a FeatureStore (or None: layer mix only)."""
    v = tmap.vectors
    cache: dict[int, list[str]] = {}

    def tokens_of(i: int) -> list[str]:
        if i not in cache:
            layer, feature = v.feature(i)
            try:
                cache[i] = _activating_tokens(store.record(v.dictionary, layer, feature))
            except LookupError:  # no statistics for this layer or feature
                cache[i] = []
        return cache[i]

    tmap.labels = []
    for level in tmap.levels:
        labels = []
        for members in level.nodes:
            mix = layer_mix(tmap, members)
            dominant = max(mix, key=lambda k: mix[k])
            counted: Counter = Counter()
            if store is not None and v.dictionary in getattr(store, "dictionaries", {}):
                picks = members[np.linspace(0, len(members) - 1,
                                            min(sample, len(members))).astype(int)]
                for i in np.unique(picks).tolist():
                    counted.update(t.strip() or repr(t) for t in tokens_of(i))
            tokens = [t for t, _ in counted.most_common(top)]
            text = f"L{dominant}" + (f" ({len(mix)} layers)" if len(mix) > 1 else "")
            if tokens:
                text += ": " + " ".join(tokens[:3])
            labels.append({"layers": mix, "dominant_layer": int(dominant),
                           "top_tokens": tokens, "label": text})
        tmap.labels.append(labels)
