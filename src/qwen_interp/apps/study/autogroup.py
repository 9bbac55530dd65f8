"""Propose feature groups ("supernodes") from a circuit-tracer attribution graph, and score a
proposal against known groups.

:func:`propose_groups` works in four steps:

1. **Keep the features that matter.** Each feature node's influence on the logits is
   circuit-tracer's ``compute_node_influence`` with the logit nodes weighted by their
   probabilities (what its ``prune_graph`` and ``qwen_interp.apps.trace.top_nodes`` rank by).
   Features are kept in that order until they hold ``node_threshold`` of the features' total
   influence (0.8, as the default node pruning of ``prune_graph`` before the viewer, which
   counts error and token nodes too), at most ``max_features`` (256; similarity is O(k^2)).
2. **Similarity** of two kept features, in [0, 1]: ``0.3 x position + 0.1 x layer +
   0.6 x function`` (weights ``WEIGHTS``), where

   - ``position``: 1 if they sit on the same token (the study's groups are mostly per token);
   - ``layer``: ``1 - |layer_a - layer_b| / (n_layers - 1)``;
   - ``function`` = ``sqrt(decoder x downstream)``, the geometric mean: what they write and
     whom they feed must both agree. ``decoder``: cosine of their decoder directions
     (``decoder="sum"``: a CLT feature's decoders summed over the layers it writes to, its net
     write into the residual stream; ``"concat"``: its output-layer decoders side by side, zeros
     below its own layer; ``"last"``: the decoder to the last layer), rescaled so that chance
     level is 0: two random directions in d_model dimensions have cosines of about
     N(0, 1/d_model), so cosines up to ``3 / sqrt(d_model)`` (0.066 for Qwen3-1.7B's 2048;
     at most 0.5) count 0 and 1 stays 1. ``downstream``: a feature's column of
     circuit-tracer's edge scores (``compute_edge_influence``: row-normalised |adjacency|
     times each target's influence plus logit weight) splits its influence over the features
     and logits it feeds directly; the term is the cosine of two such columns. Without a
     transcoder, ``function`` is ``downstream`` alone, and features on one token that feed
     the same logits group however unrelated they are: pass the transcoder.

   Multiplied, not added: on the last token nearly every feature feeds the top logit, so
   ``downstream`` alone would merge them all; features writing unrelated directions stay apart
   however alike their targets. With the defaults a shared token alone gives at most 0.4, under
   the 0.5 threshold: features on one token group when ``function`` >= 0.17 (adjacent layers)
   to 0.33 (far apart), e.g. decoder 0.15 above chance and downstream 0.8; features on
   different tokens (the digits of a year) only when ``function`` >= 0.67 to 0.83, i.e. much
   the same decoder and targets (the same feature firing on two tokens does).
3. **Cluster**: average-linkage agglomerative clustering on ``1 - similarity``
   (``scipy.cluster.hierarchy``), cut at ``1 - threshold``: a merge needs the mean similarity
   between the two clusters to be at least ``threshold``. Deterministic: the input order is
   the influence ranking (ties by adjacency index), and scipy's linkage is deterministic.
4. **Name and describe** each group (clusters under ``min_size`` features, 2 by default, are
   dropped: a lone feature is already a node of the graph): from the
   ``features/`` sidecar when ``features_dir`` is given (most common top-activating tokens and
   top logits of its features, read with the Explorer's ``FeatureStore``), else from the prompt
   tokens at the group's positions and, given an unembedding, the tokens the group's summed,
   activation-weighted decoder promotes most. Groups come most influential first; each
   description says its positions, layers, influence and within-group similarities.

:func:`score_grouping` compares a proposal with planted (known) groups: per planted group the
best-matching proposed group's precision, recall and F1 over nodes, and the adjusted Rand index
over the nodes both cover.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qwen_interp.apps.study.groups import (
    DEFAULT_DICTIONARY,
    FeatureGroup,
    FeatureNode,
    GroupSet,
)

WEIGHTS: Mapping[str, float] = {"position": 0.3, "layer": 0.1, "function": 0.6}
NODE_THRESHOLD = 0.8
MAX_FEATURES = 256
THRESHOLD = 0.5
DECODER_MODES = ("sum", "concat", "last")


# --- step 1: the features that matter -------------------------------------------------------
def logit_weights(graph):
    """Per node of the adjacency matrix: the logit nodes' probabilities, 0 elsewhere."""
    import torch
    n = graph.adjacency_matrix.shape[0]
    weights = torch.zeros(n, device=graph.adjacency_matrix.device,
                          dtype=graph.adjacency_matrix.dtype)
    weights[n - len(graph.logit_targets):] = graph.logit_probabilities.to(weights)
    return weights


def node_influence(graph) -> np.ndarray:
    """Every node's influence on the logits (circuit-tracer's ``compute_node_influence``)."""
    from circuit_tracer.graph import compute_node_influence
    return compute_node_influence(graph.adjacency_matrix, logit_weights(graph)
                                  ).float().cpu().numpy().astype(np.float64)


def select_features(influence: np.ndarray, n_features: int, node_threshold: float = NODE_THRESHOLD,
                    max_features: int = MAX_FEATURES) -> np.ndarray:
    """Adjacency indices of the most influential features, best first: the shortest prefix of
    the ranking holding ``node_threshold`` of the features' total influence, at most
    ``max_features``; features without influence are never kept."""
    if not 0.0 < node_threshold <= 1.0:
        raise ValueError(f"node_threshold must be in (0, 1], got {node_threshold}")
    if max_features < 1:
        raise ValueError(f"max_features must be at least 1, got {max_features}")
    scores = influence[:n_features]
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] > 0]
    if not len(order):
        return order
    cumulative = np.cumsum(scores[order]) / scores[order].sum()
    count = int(np.searchsorted(cumulative, node_threshold - 1e-12)) + 1
    return order[:min(count, max_features, len(order))]


# --- step 2: similarity ---------------------------------------------------------------------
def _clt_vectors(transcoder, layer: int, ids):
    """The decoder vectors of ``ids`` at ``layer``: [n, n_out, d_model] for a CLT,
    [n, d_model] for a per-layer transcoder set."""
    if hasattr(transcoder, "_get_decoder_vectors"):
        return transcoder._get_decoder_vectors(layer, ids)
    w_dec = getattr(transcoder, "W_dec", None)
    if w_dec is None:
        raise ValueError(f"{type(transcoder).__name__} has neither _get_decoder_vectors nor "
                         "W_dec: cannot read decoder directions")
    return w_dec[layer][ids]


def decoder_directions(transcoder, layers: np.ndarray, features: np.ndarray, n_layers: int,
                       mode: str = "sum") -> tuple[np.ndarray, np.ndarray]:
    """(directions for similarity in ``mode``, net writes = decoders summed over output
    layers), one row per (layer, feature); read once per layer."""
    import torch
    if mode not in DECODER_MODES:
        raise ValueError(f"decoder mode must be one of {', '.join(DECODER_MODES)}, got {mode!r}")
    rows: dict[int, tuple[Any, Any]] = {}
    with torch.no_grad():
        for layer in sorted(set(layers.tolist())):
            mask = layers == layer
            ids = torch.as_tensor(features[mask], dtype=torch.long)
            vectors = _clt_vectors(transcoder, int(layer), ids).detach().float().cpu()
            if vectors.ndim == 2:  # one decoder per feature: every mode is that vector
                rows[layer] = (vectors, vectors)
                continue
            net = vectors.sum(dim=1)
            if mode == "sum":
                chosen = net
            elif mode == "last":
                chosen = vectors[:, -1]
            else:  # concat, aligned by output layer: zeros for the layers below this one
                pad = torch.zeros(vectors.shape[0], n_layers - vectors.shape[1], vectors.shape[2])
                chosen = torch.cat([pad, vectors], dim=1).flatten(1)
            rows[layer] = (chosen, net)
    chosen_out = np.zeros((len(layers), next(iter(rows.values()))[0].shape[1]))
    net_out = np.zeros((len(layers), next(iter(rows.values()))[1].shape[1]))
    for layer, (chosen, net) in rows.items():
        mask = layers == layer
        chosen_out[mask] = chosen.numpy()
        net_out[mask] = net.numpy()
    return chosen_out, net_out


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise cosines of the rows, clipped at 0 (opposite or unrelated count alike);
    a zero row is similar to nothing."""
    norms = np.linalg.norm(vectors, axis=1)
    unit = vectors / np.where(norms > 0, norms, 1.0)[:, None]
    return np.clip(unit @ unit.T, 0.0, 1.0)


def downstream_profiles(graph, kept: np.ndarray, influence: np.ndarray) -> np.ndarray:
    """[k, n_nodes]: each kept feature's outgoing edge scores (circuit-tracer's
    ``compute_edge_influence`` restricted to its column): how its influence splits over the
    nodes it feeds directly."""
    import torch
    adjacency = graph.adjacency_matrix
    row_sums = adjacency.abs().sum(dim=1).clamp(min=1e-10)
    columns = adjacency[:, torch.as_tensor(kept, dtype=torch.long, device=adjacency.device)]
    normalized = (columns.abs() / row_sums[:, None]).float().cpu().numpy().astype(np.float64)
    downstream = influence + logit_weights(graph).float().cpu().numpy().astype(np.float64)
    return (normalized * downstream[:, None]).T


@dataclass
class Similarity:
    """The kept features' pairwise similarity and its parts (each [k, k], in [0, 1])."""

    parts: dict[str, np.ndarray]
    weights: dict[str, float]

    @property
    def function(self) -> np.ndarray:
        down = self.parts["downstream"]
        if "decoder" not in self.parts:
            return down
        return np.sqrt(down * self.parts["decoder"])

    @property
    def total(self) -> np.ndarray:
        return (self.weights["position"] * self.parts["position"]
                + self.weights["layer"] * self.parts["layer"]
                + self.weights["function"] * self.function)


def chance_cosine(dim: int) -> float:
    """Three standard deviations of the cosine of two random directions in ``dim``
    dimensions (about N(0, 1/dim)): decoder cosines below it say nothing."""
    return min(0.5, 3.0 / float(np.sqrt(max(dim, 1))))


def above_chance(cosines: np.ndarray, dim: int) -> np.ndarray:
    """Cosines rescaled so that chance level (:func:`chance_cosine`) is 0 and 1 stays 1."""
    floor = chance_cosine(dim)
    return np.clip((cosines - floor) / (1.0 - floor), 0.0, 1.0)


def similarity(layers: np.ndarray, positions: np.ndarray, n_layers: int,
               downstream: np.ndarray, decoders: np.ndarray | None = None,
               weights: Mapping[str, float] | None = None, d_model: int | None = None
               ) -> Similarity:
    """The parts and their weighted sum (see the module docstring); weights are rescaled to
    sum to 1."""
    given = dict(WEIGHTS if weights is None else weights)
    if set(given) - set(WEIGHTS) or any(not w >= 0 for w in given.values()):
        raise ValueError(f"weights are non-negative numbers for {', '.join(WEIGHTS)}, got "
                         f"{given}")
    total = sum(given.values())
    if total <= 0:
        raise ValueError("at least one similarity weight must be positive")
    weights_ = {name: float(given.get(name, 0.0)) / total for name in WEIGHTS}
    span = max(n_layers - 1, 1)
    parts = {"position": (positions[:, None] == positions[None, :]).astype(np.float64),
             "layer": 1.0 - np.abs(layers[:, None] - layers[None, :]) / span,
             "downstream": cosine_matrix(downstream)}
    if decoders is not None:
        parts["decoder"] = above_chance(cosine_matrix(decoders), d_model or decoders.shape[1])
    return Similarity(parts, weights_)


# --- step 3: clustering ---------------------------------------------------------------------
def cluster(sim: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Cluster labels (0, 1, ... in order of first member) from average linkage on
    ``1 - sim``, merging while the mean similarity between two clusters is >= threshold."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform
    k = sim.shape[0]
    if k == 0:
        return np.zeros(0, dtype=int)
    if k == 1:
        return np.zeros(1, dtype=int)
    distance = np.clip(1.0 - (sim + sim.T) / 2, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    raw = fcluster(tree, t=1.0 - threshold + 1e-9, criterion="distance")
    first: dict[int, int] = {}
    return np.array([first.setdefault(label, len(first)) for label in raw])


# --- step 4: names and descriptions ---------------------------------------------------------
def _token_texts(graph, tokenizer) -> list[str]:
    ids = [int(t) for t in graph.input_tokens.tolist()]
    if tokenizer is None:
        return [f"#{t}" for t in ids]
    return [tokenizer.decode([t]) for t in ids]


def _quote(tokens: Iterable[str]) -> str:
    return ", ".join(repr(t) for t in tokens)


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")[:24]


class _SidecarLabels:
    """Top-activating tokens and top logits of features, from a ``features compute`` run or
    a ``features/`` folder (the Explorer's ``FeatureStore``)."""

    def __init__(self, features_dir: str | Path) -> None:
        from qwen_interp.apps.explorer.store import FeatureStore
        self.store = FeatureStore.from_run(features_dir)

    def _record(self, node: FeatureNode) -> dict | None:
        from qwen_interp.apps.explorer.store import NotFound
        kind = "clt" if node.dictionary == DEFAULT_DICTIONARY else "sae"
        try:
            return self.store.record(kind, node.layer, node.feature)
        except (NotFound, ValueError):
            return None

    def summarize(self, nodes: list[FeatureNode], weights: list[float], k: int
                  ) -> tuple[list[str], list[str], int]:
        """(top-activating tokens, top logits, records found): each feature votes with its
        share of the group's influence, split over its examples / by logit rank."""
        active: dict[str, float] = defaultdict(float)
        logits: dict[str, float] = defaultdict(float)
        found = 0
        for node, weight in zip(nodes, weights):
            record = self._record(node)
            if record is None:
                continue
            found += 1
            quantiles = record.get("examples_quantiles") or []
            examples = quantiles[0]["examples"] if quantiles else []
            tokens = [ex["tokens"][ex["train_token_ind"]] for ex in examples if ex["tokens"]]
            for token in tokens:
                active[token] += weight / len(tokens)
            top = record.get("top_logits") or []
            ranks = sum(range(1, len(top) + 1))
            for rank, token in enumerate(top):
                logits[token] += weight * (len(top) - rank) / ranks
        return _best(active, k), _best(logits, k), found


def _best(counter: Mapping[str, float], k: int) -> list[str]:
    return [t for t, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:k]]


def _promoted(net: np.ndarray, unembed, tokenizer, k: int) -> list[str]:
    """The tokens the direction ``net`` raises most at the unembedding [d_model, d_vocab]."""
    import torch
    direction = torch.as_tensor(net, dtype=unembed.dtype, device=unembed.device)
    with torch.no_grad():
        effect = (direction @ unembed).float().cpu()
    ids = effect.topk(min(k, effect.shape[0])).indices.tolist()
    return [tokenizer.decode([i]) if tokenizer is not None else f"#{i}" for i in ids]


# --- the proposal ---------------------------------------------------------------------------
def propose_groups(graph, transcoder=None, *, model=None, features_dir: str | Path | None = None,
                   tokenizer=None, unembed=None, node_threshold: float = NODE_THRESHOLD,
                   max_features: int = MAX_FEATURES, threshold: float = THRESHOLD,
                   weights: Mapping[str, float] | None = None, decoder: str = "sum",
                   min_size: int = 2, top_tokens: int = 3,
                   dictionary: str = DEFAULT_DICTIONARY) -> list[FeatureGroup]:
    """Feature groups of ``graph`` (a circuit-tracer ``Graph``), most influential first.

    ``transcoder``: the graph's CLT (or transcoder set) for decoder directions; ``model``: a
    ``ReplacementModel``, which supplies the transcoder, tokenizer and unembedding when they
    are not given; ``features_dir``: a ``qwen-interp features compute`` run (or ``features/``
    folder) to name groups from; ``unembed``: a [d_model, d_vocab] matrix for promoted tokens.
    See the module docstring for the algorithm and the other parameters. Groups are disjoint
    and every node is one of the graph's feature nodes.
    """
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1, got {min_size}")
    if model is not None:
        transcoder = transcoder if transcoder is not None else getattr(model, "transcoders", None)
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        unembed = unembed if unembed is not None else getattr(model, "unembed_proj", None)
    # The nnsight backend may hold its transcoders in an Envoy; the module is inside.
    transcoder = getattr(transcoder, "_module", transcoder)
    n_features = len(graph.selected_features)
    n_layers = int(graph.cfg.n_layers)
    influence = node_influence(graph)
    kept = select_features(influence, n_features, node_threshold, max_features)
    if not len(kept):
        return []
    import torch
    chosen = graph.selected_features.cpu()[torch.as_tensor(kept, dtype=torch.long)]
    rows = graph.active_features.cpu()[chosen].numpy().astype(np.int64).reshape(-1, 3)
    layers, positions, features = rows[:, 0], rows[:, 1], rows[:, 2]
    activations = graph.activation_values.cpu()[chosen].float().numpy().astype(np.float64)

    decoders = net = None
    if transcoder is not None:
        decoders, net = decoder_directions(transcoder, layers, features, n_layers, decoder)
    sim = similarity(layers, positions, n_layers, downstream_profiles(graph, kept, influence),
                     decoders, weights, d_model=None if net is None else net.shape[1])
    labels = cluster(sim.total, threshold)

    tokens = _token_texts(graph, tokenizer)
    sidecar = _SidecarLabels(features_dir) if features_dir is not None else None
    gain = getattr(getattr(model, "ln_final", None), "w", None) if model is not None else None
    scores = influence[kept]
    total = scores.sum()
    clusters = [np.flatnonzero(labels == c) for c in range(labels.max() + 1)]
    clusters = [m for m in clusters if len(m) >= min_size]
    clusters.sort(key=lambda m: (-scores[m].sum(), m[0]))

    groups = []
    for rank, members in enumerate(clusters, start=1):
        nodes = [FeatureNode(int(layers[i]), int(positions[i]), int(features[i]), dictionary)
                 for i in members]
        where = sorted(set(positions[members].tolist()))
        on = "+".join(repr(tokens[p]) for p in where)
        active: list[str] = []
        promoted: list[str] = []
        found = 0
        if sidecar is not None:
            active, promoted, found = sidecar.summarize(
                nodes, (scores[members] / scores[members].sum()).tolist(), top_tokens)
        if not promoted and net is not None and unembed is not None:
            direction = (activations[members, None] * net[members]).sum(axis=0)
            if gain is not None:
                direction = direction * gain.detach().float().cpu().numpy()
            promoted = _promoted(direction, unembed, tokenizer, top_tokens)
        label = (_quote(active) if active else f"on {on}") + (
            f" -> {_quote(promoted)}" if promoted else "")
        word = next((w for w in map(_slug, (*active, *(tokens[p] for p in where))) if w), "")
        name = f"g{rank}_{word}" if word else f"g{rank}"
        description = _describe(members, where, tokens, layers, scores, total, sim,
                                active, promoted, found)
        groups.append(FeatureGroup(name, tuple(nodes), label=label, description=description))
    return groups


def _describe(members, where, tokens, layers, scores, total, sim: Similarity,
              active, promoted, found) -> str:
    lo, hi = int(layers[members].min()), int(layers[members].max())
    share = scores[members].sum() / total if total > 0 else 0.0
    on = "+".join(repr(tokens[p]) for p in where)
    text = (f"{len(members)} feature{'s' if len(members) > 1 else ''} on {on} "
            f"(position{'s' if len(where) > 1 else ''} {', '.join(map(str, where))}), "
            f"layer{'s' if hi > lo else ''} {lo if lo == hi else f'{lo}-{hi}'}; influence "
            f"{scores[members].sum():.4g} (mean {scores[members].mean():.4g}, {share:.0%} of "
            "the kept features')")
    if len(members) > 1:
        block = np.ix_(members, members)
        off = ~np.eye(len(members), dtype=bool)
        parts = ", ".join(f"{name} {sim.parts[name][block][off].mean():.2f}"
                          for name in ("decoder", "downstream") if name in sim.parts)
        parts = parts.replace("decoder", "decoder cosine above chance")
        parts += f", function {sim.function[block][off].mean():.2f}"
        text += f"; mean pairwise similarity {sim.total[block][off].mean():.2f} ({parts})"
    if found:
        text += f"; from {found} feature records: top-activating tokens {_quote(active)}"
    if promoted:
        text += f"; promotes {_quote(promoted)}"
    return text + "."


# --- scoring --------------------------------------------------------------------------------
def _groups(groups: GroupSet | Iterable[FeatureGroup]) -> list[FeatureGroup]:
    out = list(groups)
    names = [g.name for g in out]
    if len(set(names)) != len(names):
        raise ValueError(f"group names repeat: {names}")
    return out


def _membership(groups: list[FeatureGroup], what: str) -> dict[FeatureNode, int]:
    owner: dict[FeatureNode, int] = {}
    for i, g in enumerate(groups):
        for node in g.nodes:
            if node in owner:
                raise ValueError(f"{what}: {node} is in groups {groups[owner[node]].name!r} and "
                                 f"{g.name!r}; scoring needs disjoint groups")
            owner[node] = i
    return owner


def adjusted_rand_index(a: list[int], b: list[int]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items (1 when they
    agree up to renaming; about 0 for chance). A degenerate case (all items in one cluster in
    both, or fewer than 2 items) scores 1 if the labelings agree, else 0."""
    n = len(a)
    pairs = Counter(zip(a, b))

    def comb2(x: int) -> float:
        return x * (x - 1) / 2

    index = sum(comb2(c) for c in pairs.values())
    rows = sum(comb2(c) for c in Counter(a).values())
    cols = sum(comb2(c) for c in Counter(b).values())
    expected = rows * cols / comb2(n) if n > 1 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        same = len(pairs) == len(set(a)) == len(set(b))
        return 1.0 if same else 0.0
    return float((index - expected) / (maximum - expected))


def score_grouping(proposed: GroupSet | Iterable[FeatureGroup],
                   planted: GroupSet | Iterable[FeatureGroup]) -> dict[str, Any]:
    """How well ``proposed`` recovers ``planted`` (nodes compare by layer, position, feature
    and dictionary).

    Returns ``groups``: per planted group its best proposed match (highest F1, then the
    earlier proposed group) with ``precision`` (share of the match's nodes that are planted
    in this group), ``recall``, ``f1`` and ``size``; ``mean_f1`` and ``min_f1`` over planted
    groups; ``ari``: the adjusted Rand index over the ``n_common`` nodes that are in both a
    proposed and a planted group; ``coverage``: the share of planted nodes in some proposed
    group.
    """
    prop, plant = _groups(proposed), _groups(planted)
    owner_p = _membership(prop, "proposed")
    owner_t = _membership(plant, "planted")
    per_group: dict[str, dict[str, Any]] = {}
    for g in plant:
        truth = set(g.nodes)
        best: dict[str, Any] = {"match": None, "precision": 0.0, "recall": 0.0, "f1": 0.0}
        for q in prop:
            hit = len(truth & set(q.nodes))
            if not hit:
                continue
            precision, recall = hit / len(q.nodes), hit / len(truth)
            f1 = 2 * precision * recall / (precision + recall)
            if f1 > best["f1"]:
                best = {"match": q.name, "precision": precision, "recall": recall, "f1": f1}
        per_group[g.name] = {**best, "size": len(truth)}
    common = [n for n in owner_t if n in owner_p]
    f1s = [v["f1"] for v in per_group.values()]
    return {
        "groups": per_group,
        "mean_f1": float(np.mean(f1s)) if f1s else 0.0,
        "min_f1": float(min(f1s)) if f1s else 0.0,
        "ari": adjusted_rand_index([owner_t[n] for n in common], [owner_p[n] for n in common])
        if common else 0.0,
        "n_common": len(common),
        "coverage": len(common) / len(owner_t) if owner_t else 0.0,
    }
