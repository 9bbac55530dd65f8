"""Feature groups (``apps.study.groups``) and their automatic proposal (``apps.study.autogroup``).

The proposal is checked on circuit-tracer ``Graph`` objects built here with a known structure
(planted groups: one position each, one decoder direction each up to noise, one target logit
each; plus distractor features and a tail of weak noise features), using circuit-tracer's own
``Graph`` and ``CrossLayerTranscoder`` classes, and on a real ``attribute()`` graph of the small
offline Qwen3-1.7B-Base and its CLT.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import SEED_PROMPT
from qwen_interp.apps.study.autogroup import (
    adjusted_rand_index,
    node_influence,
    propose_groups,
    score_grouping,
    select_features,
)
from qwen_interp.apps.study.groups import (
    FeatureGroup,
    FeatureNode,
    GroupSet,
    graph_feature_nodes,
    group,
    validate_against,
)

MODEL = "Qwen/Qwen3-1.7B-Base"
RELEASE = "bluelightai/clt-qwen3-1.7b-base-20k"
CPU = torch.device("cpu")


# --- groups and their files -------------------------------------------------------------------
def study_groups() -> GroupSet:
    return GroupSet([
        group("president", (3, 4, 120), (4, 4, 77), label="president"),
        group("year", (2, 10, 9), (2, 11, 31), label="year ~2010",
              description="features on the year's digits"),
        FeatureGroup("sae", (FeatureNode(1, 12, 5, "qwen-scope/layer_1"),
                             FeatureNode(1, 12, 6))),
    ], prompt=SEED_PROMPT)


def test_yaml_round_trip(tmp_path):
    groups = study_groups()
    path = groups.save(tmp_path / "sub" / "groups.yaml")
    loaded = GroupSet.load(path)
    assert loaded == groups
    assert loaded.names == ["president", "year", "sae"]
    assert loaded["year"].label == "year ~2010"
    assert loaded["sae"].nodes[0].dictionary == "qwen-scope/layer_1"
    assert loaded["sae"].nodes[1].dictionary == "clt"
    assert loaded.group_of(FeatureNode(2, 11, 31)) == "year"
    # The file is the documented format: plain [layer, position, feature] lists for the
    # default dictionary, a mapping for the node of another one.
    import yaml
    data = yaml.safe_load(path.read_text())
    assert data["prompt"] == SEED_PROMPT and "dictionary" not in data
    assert data["groups"][0]["nodes"] == [[3, 4, 120], [4, 4, 77]]
    assert data["groups"][2]["nodes"][0] == {"layer": 1, "position": 12, "feature": 5,
                                             "dictionary": "qwen-scope/layer_1"}


def test_yaml_dictionary_defaults(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("dictionary: my-sae\ngroups:\n"
                    "  - name: a\n    nodes: [[0, 1, 2], {layer: 0, position: 1, feature: 3,"
                    " dictionary: clt}]\n"
                    "  - name: b\n    dictionary: other\n    nodes: [[1, 2, 3]]\n")
    loaded = GroupSet.load(path)
    assert [n.dictionary for n in loaded.nodes()] == ["my-sae", "clt", "other"]
    assert loaded.prompt is None
    loaded.save(path)
    assert GroupSet.load(path) == loaded


BAD_FILES = [
    ("groups: [{name: a, nodes: [[0, 1, 2]], colour: red}]", "groups[0] ('a'): unknown key(s) "
     "'colour'"),
    ("groups: []\nmodel: x", "the top level: unknown key(s) 'model'"),
    ("groups: [{name: a, nodes: [{layer: 0, position: 1, feature: 2, pos: 3}]}]",
     "groups[0] ('a').nodes[0]: unknown key(s) 'pos'"),
    ("groups: [{name: a, nodes: [[0, '1', 2]]}]", "groups[0] ('a').nodes[0] [0, '1', 2]: "
     "position must be a non-negative integer, got '1'"),
    ("groups: [{name: a, nodes: [[0, 1, 2.5]]}]", "feature must be a non-negative integer, "
     "got 2.5"),
    ("groups: [{name: a, nodes: [[true, 1, 2]]}]", "layer must be a non-negative integer, "
     "got True"),
    ("groups: [{name: a, nodes: [[0, -1, 2]]}]", "groups[0] ('a').nodes[0] [0, -1, 2]: position "
     "must be a non-negative integer, got -1"),
    ("groups: [{name: a, nodes: [[0, 1, 2]]}, {name: a, nodes: [[0, 1, 3]]}]",
     "groups[1] ('a'): duplicate group name 'a'"),
    ("groups: [{name: a, nodes: []}]", "groups[0] ('a'): the group has no nodes"),
    ("groups: [{name: a}]", "groups[0] ('a'): 'nodes' must be a list"),
    ("groups: [{name: a, nodes: [[0, 1]]}]", "groups[0] ('a').nodes[0] [0, 1]: a node list is "
     "[layer, position, feature], got 2 values"),
    ("groups: [{name: a, nodes: [{layer: 0, feature: 2}]}]", "missing position"),
    ("groups: [{name: a, nodes: [[0, 1, 2], [0, 1, 2]]}]", "lists L0 feature 2 at position 1 "
     "twice"),
    ("groups: [{name: a, nodes: [[0, 1, 2]]}, {name: b, nodes: [[0, 1, 2]]}]",
     "groups[1] ('b'): L0 feature 2 at position 1 is in group 'a' and in group 'b'"),
    ("groups: [{nodes: [[0, 1, 2]]}]", "groups[0]: a group needs a 'name'"),
    ("groups: [{name: '', nodes: [[0, 1, 2]]}]", "'name' must not be empty"),
    ("groups: [[0, 1, 2]]", "groups[0]: a group must be a mapping"),
    ("groups: {name: a}", "'groups' must be a list of groups, got dict"),
    ("prompt: hi", "'groups' must be a list of groups, got nothing"),
    ("- a\n- b", "expected a mapping with a 'groups' list, got list"),
    ("groups: [{name: a, nodes: [[0, 1, 2]]}]\nprompt: 3", "prompt must be a string"),
    ("groups: [{name: a, nodes: [[0, 1, 2]]\n", "not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_file_one_clear_error(tmp_path, text, message):
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        GroupSet.load(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_python_api_errors():
    with pytest.raises(ValueError, match="group 'x' has no nodes"):
        group("x")
    with pytest.raises(ValueError, match="position must be a non-negative integer, got -2"):
        FeatureNode(0, -2, 1)
    assert FeatureNode(np.int64(1), torch.tensor(2).item(), 3).key == (1, 2, 3)
    groups = study_groups()
    with pytest.raises(ValueError, match="duplicate group name 'year'"):
        groups.add(group("year", (9, 9, 9)))
    with pytest.raises(KeyError, match="no group 'nope'"):
        groups["nope"]


# --- synthetic circuit-tracer graphs ----------------------------------------------------------
N_LAYERS, D_MODEL, WIDTH, N_POS = 4, 256, 64, 8
# Logit probabilities; the last logit is fed by the distractors only.
PROBS = [0.25, 0.2, 0.15, 0.1, 0.3]


def synthetic_graph(planted, distractors, n_noise=80, seed=0):
    """A circuit-tracer Graph and CLT with known groups.

    ``planted``: ``(name, position, layers, logit)``: one feature per layer entry at
    ``position``, decoders (to every output layer) = a group direction + noise, each feeding
    ``logit`` only. ``distractors``: ``(position, layer)``: as influential as group members, own
    random decoder, feeding the last logit. ``n_noise`` weak features (random position, decoder,
    target logit) make the influence tail that step (a) drops. Tokens feed the features at their
    position; error nodes feed every logit a little."""
    from circuit_tracer.attribution.targets import LogitTarget
    from circuit_tracer.graph import Graph
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig
    rng = np.random.default_rng(seed)
    feats = []  # (layer, position, feature, decoder, {logit: strength}, activation)
    next_id = [0] * N_LAYERS

    def add(layer, position, vector, targets, activation):
        feature = next_id[layer]
        next_id[layer] += 1
        feats.append((layer, position, feature, vector, targets, activation))
        return FeatureNode(layer, position, feature)

    groups = []
    for name, position, layers, logit in planted:
        direction = rng.standard_normal(D_MODEL)
        groups.append(FeatureGroup(name, tuple(
            add(layer, position, direction + 0.4 * rng.standard_normal(D_MODEL),
                {logit: 1.0 + 0.2 * rng.random()}, 1.0 + rng.random()) for layer in layers)))
    for position, layer in distractors:
        add(layer, position, rng.standard_normal(D_MODEL), {len(PROBS) - 1: 1.0}, 1.0)
    for _ in range(n_noise):
        add(int(rng.integers(N_LAYERS)), int(rng.integers(1, N_POS)),
            rng.standard_normal(D_MODEL), {int(rng.integers(len(PROBS))): 0.06}, 0.5)

    n, n_err = len(feats), N_LAYERS * N_POS
    size = n + n_err + N_POS + len(PROBS)
    adjacency = torch.zeros(size, size)  # [target, source]
    first_logit = size - len(PROBS)
    for i, (_, position, _, _, targets, _) in enumerate(feats):
        for logit, strength in targets.items():
            adjacency[first_logit + logit, i] = strength
        adjacency[i, n + n_err + position] = 1.0
    adjacency[first_logit:, n:n + n_err] = 0.02

    clt = CrossLayerTranscoder(N_LAYERS, WIDTH, D_MODEL, lazy_decoder=False, device=CPU,
                               dtype=torch.float32)
    with torch.no_grad():
        for layer, _, feature, vector, _, _ in feats:
            for out in range(N_LAYERS - layer):
                clt.W_dec[layer][feature, out] = torch.as_tensor(
                    vector + 0.1 * rng.standard_normal(D_MODEL), dtype=torch.float32)
    cfg = UnifiedConfig(n_layers=N_LAYERS, d_model=D_MODEL, d_head=16, n_heads=4, d_mlp=512,
                        d_vocab=100, tokenizer_name="synthetic", model_name="synthetic",
                        original_architecture="Qwen3ForCausalLM")
    graph = Graph(input_string="synthetic", input_tokens=torch.arange(10, 10 + N_POS),
                  active_features=torch.tensor([f[:3] for f in feats]),
                  adjacency_matrix=adjacency, cfg=cfg, selected_features=torch.arange(n),
                  activation_values=torch.tensor([f[5] for f in feats], dtype=torch.float32),
                  logit_targets=[LogitTarget(f"t{i}", 50 + i) for i in range(len(PROBS))],
                  logit_probabilities=torch.tensor(PROBS), scan="synthetic")
    return graph, clt, GroupSet(groups)


def per_layer_transcoders(clt):
    """circuit-tracer's TranscoderSet whose layer-l decoder is the CLT's, summed over the
    layers it writes to."""
    from circuit_tracer.transcoder.single_layer_transcoder import (
        SingleLayerTranscoder,
        TranscoderSet,
    )
    layers = {}
    for layer in range(clt.n_layers):
        t = SingleLayerTranscoder(clt.d_model, clt.d_transcoder, torch.relu, layer, device=CPU,
                                  dtype=torch.float32)
        with torch.no_grad():
            t.W_dec.copy_(clt.W_dec[layer].sum(dim=1))
        layers[layer] = t
    return TranscoderSet(layers, "hook_resid_mid", "hook_mlp_out")


def planted_positions(graph, planted: GroupSet, n_distractors: int):
    """Sanity of the construction: the planted features and distractors are the most
    influential ones, and all of them are needed to reach 80% of the features' influence (so
    step (a) keeps them all, and then at most a few noise features)."""
    influence = node_influence(graph)[:len(graph.selected_features)]
    strong = influence[:len(planted.nodes()) + n_distractors]
    assert strong.min() > influence[len(strong):].max()
    assert (strong.sum() - strong.min()) / influence.sum() < 0.78


def check_recovered(proposed, planted, exact=True):
    score = score_grouping(proposed, planted)
    assert score["min_f1"] == 1.0, score
    assert score["ari"] == 1.0 and score["coverage"] == 1.0
    if not exact:
        return score
    # Distractors and noise never join a planted group, nor make a group of their own.
    assert len(proposed) == len(planted)
    assert {frozenset(g.nodes) for g in proposed} == {frozenset(g.nodes) for g in planted}
    return score


def test_recovers_planted_groups_at_distinct_positions():
    planted = [("a", 2, [0, 1, 1, 2], 0), ("b", 4, [1, 2, 2, 3], 1), ("c", 6, [2, 3, 3], 2),
               ("d", 7, [0, 1, 3], 3)]
    distractors = [(3, 1), (5, 2), (1, 0)]
    graph, clt, truth = synthetic_graph(planted, distractors)
    planted_positions(graph, truth, len(distractors))
    proposed = propose_groups(graph, clt)
    check_recovered(proposed, truth)
    # Most influential first (group a feeds the most probable of the groups' logits); each
    # says why.
    assert [g.nodes[0].position for g in proposed] == [2, 4, 6, 7]
    assert proposed[0].name == "g1_12" and proposed[0].label == "on '#12'"
    assert "4 features on '#12' (position 2), layers 0-2" in proposed[0].description
    assert "(decoder cosine above chance 0.8" in proposed[0].description
    # Deterministic.
    again = propose_groups(graph, clt)
    assert again == proposed
    # The other decoder readings, and per-layer transcoders (one decoder per feature: here
    # the CLT's decoders summed over output layers), recover the same groups.
    for mode in ("concat", "last"):
        check_recovered(propose_groups(graph, clt, decoder=mode), truth)
    check_recovered(propose_groups(graph, per_layer_transcoders(clt)), truth)
    with pytest.raises(ValueError, match="decoder mode must be one of sum, concat, last"):
        propose_groups(graph, clt, decoder="mean")
    # With min_size=1 the distractors (and any kept noise feature) come back as singletons.
    with_singles = propose_groups(graph, clt, min_size=1)
    assert [g for g in with_singles if len(g) > 1] == proposed
    singles = {g.nodes[0] for g in with_singles if len(g) == 1}
    assert {(n.position, n.layer) for n in singles} >= set(distractors)


def test_separates_groups_sharing_a_position():
    """Two groups on one token (and a distractor there) differ in decoder direction and target
    logit; two other groups share another token."""
    planted = [("a", 2, [0, 1, 1, 2], 0), ("b", 2, [1, 2, 2, 3], 1), ("c", 6, [2, 3, 3], 2),
               ("d", 6, [1, 2, 3], 3)]
    distractors = [(2, 1), (6, 2), (1, 0)]
    graph, clt, truth = synthetic_graph(planted, distractors)
    planted_positions(graph, truth, len(distractors))
    check_recovered(propose_groups(graph, clt), truth)
    # Without decoders, position and downstream targets alone still recover the planted
    # groups (they feed different logits); but distractors and noise features that feed the
    # same logit now group too, which their unrelated decoders prevented.
    blind = propose_groups(graph)
    check_recovered(blind, truth, exact=False)
    extra = [n for g in blind for n in g.nodes if n not in truth.nodes()]
    assert extra and {(n.position, n.layer) for n in extra} & set(distractors)
    assert all("decoder" not in g.description for g in blind)


def test_groups_across_positions_when_decoder_and_targets_agree():
    """A group spread over two tokens (like the year's digits) is one group; a group on one
    of those tokens with another decoder and target stays apart."""
    graph, clt, truth = synthetic_graph(
        [("year", 3, [0, 1, 2], 0), ("other", 5, [1, 2], 1)], [(6, 1)], seed=3)
    year = truth["year"]
    # Move the year group's last feature one token on: same decoder, same target.
    moved = FeatureNode(year.nodes[2].layer, 4, year.nodes[2].feature)
    rows = graph.active_features
    index = [tuple(r) for r in rows.tolist()].index(year.nodes[2].key)
    rows[index, 1] = 4
    truth = GroupSet([FeatureGroup("year", (*year.nodes[:2], moved)), truth["other"]])
    proposed = propose_groups(graph, clt)
    check_recovered(proposed, truth)
    assert proposed[0].positions == (3, 4) and "positions 3, 4" in proposed[0].description


def test_step_a_keeps_the_influential_features():
    graph, _, truth = synthetic_graph([("a", 2, [0, 1], 0)], [], n_noise=20)
    influence = node_influence(graph)
    n = len(graph.selected_features)
    kept = select_features(influence, n)
    order = np.argsort(-influence[:n], kind="stable")
    share = np.cumsum(influence[order]) / influence[:n].sum()
    # The shortest prefix of the ranking that holds 80% of the influence.
    assert share[len(kept) - 1] >= 0.8 > share[len(kept) - 2]
    assert kept.tolist() == order[:len(kept)].tolist()
    assert select_features(influence, n, max_features=3).tolist() == order[:3].tolist()
    assert len(select_features(influence, n, node_threshold=1.0)) == n
    with pytest.raises(ValueError, match="node_threshold"):
        select_features(influence, n, node_threshold=0)


def test_graph_feature_nodes_and_validation():
    graph, _, truth = synthetic_graph([("a", 2, [0, 1], 0), ("b", 4, [2, 3], 1)], [],
                                      n_noise=4)
    # Select all but the last active feature (circuit-tracer's selected_features is a subset).
    last = tuple(graph.active_features[-1].tolist())
    n = len(graph.selected_features) - 1
    graph.selected_features = graph.selected_features[:n]
    keep = [i for i in range(graph.adjacency_matrix.shape[0]) if i != n]  # its row and column
    graph.adjacency_matrix = graph.adjacency_matrix[keep][:, keep]
    nodes = graph_feature_nodes(graph)
    assert list(nodes)[:4] == truth.nodes()
    assert list(nodes.values()) == graph.activation_values[:n].tolist()
    truth.validate_against(graph, selected=True)
    # Active but not selected: an active feature, not a node of the graph.
    validate_against([group("ok", last)], graph)
    with pytest.raises(ValueError, match="active on the prompt but not a node of the graph"):
        validate_against([group("ok", last)], graph, selected=True)
    cases = [
        (FeatureNode(0, 2, 63), "not active on the graph's prompt"),
        (FeatureNode(0, 9, 0), "the graph has 4 layers and 8 positions"),
        (FeatureNode(0, 2, 0, "an-sae"), "its dictionary is 'an-sae'"),
    ]
    for node, why in cases:
        with pytest.raises(ValueError) as info:
            validate_against([group("bad", node)], graph)
        assert str(info.value).startswith(f"group 'bad': {node} is not a feature of the graph")
        assert why in str(info.value)


# --- scoring ----------------------------------------------------------------------------------
def test_adjusted_rand_index_known_values():
    # Hubert & Arabie's formula; the values scikit-learn's documentation gives for these.
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 3, 3]) == 1.0
    assert adjusted_rand_index([0, 0], [1, 1]) == 1.0


def test_score_grouping_partial_match():
    planted = GroupSet([group("a", (0, 1, 1), (0, 1, 2), (0, 1, 3), (0, 1, 4)),
                        group("b", (1, 5, 1), (1, 5, 2))])
    proposed = [group("p", (0, 1, 1), (0, 1, 2), (0, 1, 3), (1, 5, 1)),
                group("q", (1, 5, 2), (2, 2, 2))]
    score = score_grouping(proposed, planted)
    a, b = score["groups"]["a"], score["groups"]["b"]
    assert (a["match"], a["precision"], a["recall"]) == ("p", 0.75, 0.75)
    assert a["f1"] == pytest.approx(0.75)
    # b: p has 1/4 of its nodes in b (F1 1/3), q 1/2 (F1 1/2): q matches.
    assert (b["match"], b["precision"], b["recall"]) == ("q", 0.5, 0.5)
    assert score["min_f1"] == pytest.approx(0.5)
    assert score["mean_f1"] == pytest.approx(0.625)
    assert score["n_common"] == 5 and score["coverage"] == pytest.approx(5 / 6)
    # Common nodes: planted a,a,a,b,b vs proposed p,p,p,p,q.
    assert score["ari"] == pytest.approx(adjusted_rand_index([0, 0, 0, 1, 1], [0, 0, 0, 0, 1]))
    assert score_grouping([], planted)["groups"]["a"]["match"] is None
    with pytest.raises(ValueError, match="disjoint"):
        score_grouping([group("p", (0, 1, 1)), group("q", (0, 1, 1))], planted)


# --- a real attribution graph -----------------------------------------------------------------
@pytest.fixture(scope="module")
def traced(qwen_offline_hub, qwen_registry):
    from circuit_tracer import ReplacementModel, attribute
    release = qwen_registry.transcoder_release(RELEASE)
    qwen_offline_hub.transcoder(release, qwen_registry.model(MODEL))
    model = ReplacementModel.from_pretrained(MODEL, RELEASE, device=CPU, dtype=torch.float32)
    graph = attribute(SEED_PROMPT, model, max_n_logits=5, desired_logit_prob=0.9,
                      batch_size=64)
    return model, graph


def test_real_graph_proposal(traced, tmp_path):
    model, graph = traced
    groups = propose_groups(graph, model=model, min_size=1)
    assert any(len(g) >= 2 for g in groups)
    # Active features and feature nodes of the graph; disjoint (GroupSet refuses overlaps).
    GroupSet(groups).validate_against(graph, selected=True)
    nodes = [n for g in groups for n in g.nodes]
    assert set(nodes) <= set(graph_feature_nodes(graph))
    # With min_size=1 the groups partition exactly the features step (a) keeps.
    influence = node_influence(graph)
    kept = select_features(influence, len(graph.selected_features))
    rows = graph.active_features[graph.selected_features[torch.as_tensor(kept)]].tolist()
    assert sorted(n.key for n in nodes) == sorted(map(tuple, rows))
    # Most influential first.
    key_influence = {tuple(r): influence[i] for r, i in zip(rows, kept)}
    totals = [sum(key_influence[n.key] for n in g.nodes) for g in groups]
    assert totals == sorted(totals, reverse=True)
    # Labels name the prompt tokens at the group's positions and the promoted tokens.
    tokens = [model.tokenizer.decode([t]) for t in graph.input_tokens.tolist()]
    first = groups[0]
    assert first.label.startswith("on " + "+".join(repr(tokens[p]) for p in first.positions))
    assert " -> " in first.label and "promotes" in first.description
    # Deterministic, and the default min_size keeps exactly the groups of two or more.
    again = propose_groups(graph, model=model, min_size=1)
    assert again == groups
    default = propose_groups(graph, model=model)
    assert [g.nodes for g in default] == [g.nodes for g in groups if len(g) >= 2]
    # A proposal saves as a groups file and loads back as it was.
    proposal = GroupSet(groups, prompt=graph.input_string)
    assert GroupSet.load(proposal.save(tmp_path / "proposed.yaml")) == proposal


def test_real_graph_names_from_feature_sidecar(traced, tmp_path):
    from qwen_interp.apps.features.sidecar import write_sidecar
    model, graph = traced
    width, n_layers = int(model.transcoders.d_transcoder), int(graph.cfg.n_layers)

    def record(layer, feature):
        example = {"tokens": ["a", f"L{layer}F{feature}", "b"], "tokens_acts_list": [0, 1, 0],
                   "train_token_ind": 1, "is_repeated_datapoint": False}
        return {"transcoder_id": RELEASE, "index": feature,
                "examples_quantiles": [{"quantile_name": "Top activations",
                                        "examples": [example]}],
                "top_logits": [f"up{layer}_{feature}", "x"], "bottom_logits": [],
                "act_min": 0.0, "act_max": 1.0, "quantile_values": [1.0], "histogram": [1.0],
                "activation_frequency": 0.1}

    folder = write_sidecar(tmp_path / "features", (
        (layer, (record(layer, f) for f in range(width))) for layer in range(n_layers)))
    groups = propose_groups(graph, model=model, features_dir=folder)
    plain = propose_groups(graph, model=model)
    assert [g.nodes for g in groups] == [g.nodes for g in plain]  # naming changes names only
    for g in groups:
        top = g.nodes[0]  # the group's most influential feature votes most
        assert g.label.startswith(repr(f"L{top.layer}F{top.feature}"))
        assert f"-> {f'up{top.layer}_{top.feature}'!r}" in g.label
        assert g.name.endswith(f"_l{top.layer}f{top.feature}")
        assert f"from {len(g)} feature records" in g.description
