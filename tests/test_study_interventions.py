"""Group interventions and batched sweeps (qwen_interp.apps.study.interventions) on the small
offline Qwen3-1.7B-Base (3 layers, d_model 64), its random CLT (32 features per layer) and a tied
test SAE at layers 0 and 2, fp32 on the CPU.

References nobody here wrote: circuit-tracer's own ``ReplacementModel.feature_intervention``
called once per setting (CLT edits), ``qwen_interp_saelens.steering``'s ``steer``/``clamp``/
``suppress`` and hooks written here from Qwen-Scope's formula ``h + s * W_dec[f]`` (SAE edits).
Logits must agree within atol = rtol = 1e-4 (measured: <= 3e-6).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers import SEED_PROMPT, stand_in_dictionaries

MODEL = "Qwen/Qwen3-1.7B-Base"
TRANSCODER = "bluelight-qwen3-1.7b"
TOL = dict(atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def session(qwen_offline_hub, qwen_registry):
    from sae_lens import SAE

    from qwen_interp.apps.session import Session
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        s = Session.from_pretrained(MODEL, TRANSCODER, device="cpu")
        for layer in (0, 2):
            s.add_sae(SAE.from_pretrained(release.release, f"layer{layer}"))
        yield s


@pytest.fixture(scope="module")
def clean(session):
    from qwen_interp.apps.study.interventions import clean_run
    return clean_run(session, SEED_PROMPT)


def active(clean, layer=None):
    """(layer, position, feature) of every active CLT feature after position 0."""
    rows = (clean.clt > 0).nonzero().tolist()
    return [tuple(r) for r in rows if r[1] > 0 and (layer is None or r[0] == layer)]


@pytest.fixture(scope="module")
def groups(clean):
    """Two disjoint groups, each over all three layers and several positions."""
    from qwen_interp.apps.study.groups import group
    by_layer = [active(clean, layer) for layer in range(3)]
    a = [by_layer[0][3], by_layer[1][10], by_layer[2][20], by_layer[1][30], by_layer[2][-1],
         by_layer[0][-5]]
    b = [by_layer[0][12], by_layer[1][-8], by_layer[2][7]]
    out = group("story", *a), group("other", *b)
    for g in out:
        assert len(g.layers) == 3 and len(g.positions) >= 3, g
    return out


def upstream(session, clean, intervention) -> torch.Tensor:
    """circuit-tracer's feature_intervention with its defaults; the last position's logits."""
    logits, _ = session.model.feature_intervention(clean.tokens,
                                                   intervention.clt_tuples(clean))
    return logits[0, -1]


@torch.no_grad()
def forward(model, tokens) -> torch.Tensor:
    """The model's own last-position logits (with whatever hooks are on)."""
    return model(tokens)[0, -1]


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


# --- CLT: circuit-tracer's semantics ------------------------------------------------------------
MODES = [("ablate", 0.0), ("scale", 0.5), ("scale", -2.0), ("clamp", 3.0), ("add", 1.5)]


def test_tuples_set_values_from_the_clean_activations(clean, groups):
    from qwen_interp.apps.study.interventions import Intervention
    g = groups[0]
    acts = [float(clean.clt[n.layer, n.position, n.feature]) for n in g.nodes]
    assert all(a > 0 for a in acts)
    expected = {"ablate": [0.0] * len(acts), "scale": [0.5 * a for a in acts],
                "clamp": [3.0] * len(acts), "add": [a + 1.5 for a in acts]}
    for mode, strength in MODES[:2] + MODES[3:]:
        tuples = Intervention(g, mode, strength).clt_tuples(clean)
        assert [t[:3] for t in tuples] == [n.key for n in g.nodes]
        assert [t[3] for t in tuples] == pytest.approx(expected[mode], rel=1e-6), mode


@pytest.mark.parametrize("mode,strength", MODES)
def test_each_mode_equals_feature_intervention(session, clean, groups, mode, strength):
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    iv = Intervention(groups[0], mode, strength)
    ours = intervened_logits(clean, [iv])[0]
    ref = upstream(session, clean, iv)
    torch.testing.assert_close(ours, ref, **TOL)
    assert max_diff(ref, clean.logits) > 0.05  # the edit did something to compare


def test_ablating_a_group_changes_the_prediction(session, clean, groups):
    from qwen_interp.apps.study.interventions import Intervention, sweep
    result = sweep(session, SEED_PROMPT, groups, [], mode="ablate", top_k=5)
    assert [o.group for o in result.outcomes] == ["story", "other"]
    for o in result.outcomes:
        assert max_diff(o.logits, result.clean.logits) > 0.05
        # the random model's distribution is flat (top-1 p ~ 0.4%): a relative change
        assert o.target_p != pytest.approx(result.clean.target_p, rel=2e-3)
        torch.testing.assert_close(o.logits, upstream(session, clean, Intervention(
            next(g for g in groups if g.name == o.group), "ablate")), **TOL)


def test_scale_one_is_unsteered(session, clean, groups):
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    unsteered = forward(session.model, clean.tokens)
    ours = intervened_logits(clean, [Intervention(g, "scale", 1.0) for g in groups])
    for row in ours:
        torch.testing.assert_close(row, unsteered, **TOL)
    torch.testing.assert_close(clean.logits, unsteered, **TOL)


def test_clamping_an_inactive_feature_turns_it_on(session, clean):
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    on = set(active(clean))
    node = next((1, p, f) for p in range(1, clean.n_pos) for f in range(32)
                if (1, p, f) not in on)
    g = SimpleNamespace(name="off", nodes=[SimpleNamespace(layer=node[0], position=node[1],
                                                           feature=node[2], dictionary="clt")])
    iv = Intervention(g, "clamp", 4.0)
    ref = upstream(session, clean, iv)
    torch.testing.assert_close(intervened_logits(clean, [iv])[0], ref, **TOL)
    assert max_diff(ref, clean.logits) > 1e-3


# --- batched sweeps -----------------------------------------------------------------------------
STRENGTHS = [-1.0, 0.0, 1.0, 2.0]


def embed_batches():
    """A hook that records the batch size of every forward pass."""
    sizes: list[int] = []
    return sizes, ("hook_embed", lambda acts, hook: sizes.append(acts.shape[0]))


@pytest.fixture(scope="module")
def swept(session, groups):
    """A scale sweep of both groups and the batch size of each forward pass it made."""
    from qwen_interp.apps.study.interventions import sweep
    sizes, hook = embed_batches()
    with session.model.hooks(fwd_hooks=[hook]):
        result = sweep(session, SEED_PROMPT, groups, STRENGTHS, mode="scale", top_k=10)
    return result, sizes


def test_sweep_is_one_batched_pass_equal_to_one_by_one_calls(session, clean, groups, swept):
    result, sizes = swept
    settings = len(groups) * len(STRENGTHS)
    assert sizes == [1, settings]  # the clean pass, then every setting in one batch
    assert [(o.group, o.intervention.strength) for o in result.outcomes] == [
        (g.name, s) for g in groups for s in STRENGTHS]
    worst = 0.0
    for o in result.outcomes:
        ref = upstream(session, clean, o.intervention)
        torch.testing.assert_close(o.logits, ref, **TOL)
        worst = max(worst, max_diff(o.logits, ref))
        probs = ref.softmax(-1)
        assert o.target_p == pytest.approx(float(probs[result.target.id]), abs=1e-5)
        assert [t.id for t in o.top[:3]] == probs.topk(3).indices.tolist()
    assert worst < 1e-4
    torch.testing.assert_close(result.clean.logits, forward(session.model, clean.tokens), **TOL)
    torch.testing.assert_close(result.get("story", 1.0).logits, result.clean.logits, **TOL)
    assert result.get("story", -1.0).target_p != pytest.approx(result.clean.target_p, rel=2e-3)


def test_sweep_chunks_give_the_same_rows(session, groups, swept):
    from qwen_interp.apps.study.interventions import sweep
    sizes, hook = embed_batches()
    with session.model.hooks(fwd_hooks=[hook]):
        chunked = sweep(session, SEED_PROMPT, groups, STRENGTHS, batch_size=3)
    assert sizes == [1, 3, 3, 2]
    for a, b in zip(swept[0].outcomes, chunked.outcomes, strict=True):
        torch.testing.assert_close(a.logits, b.logits, **TOL)


def test_out_of_memory_halves_the_batch(session, groups, swept, monkeypatch):
    """The device running out of memory (simulated above 3 rows: a CPU cannot) splits the pass."""
    from qwen_interp.apps.study import interventions
    real = interventions._run_rows
    sizes = []

    def small_device(model, tokens, rows, *args, **kwargs):
        sizes.append(len(rows))
        if len(rows) > 3:
            raise torch.OutOfMemoryError("simulated")
        return real(model, tokens, rows, *args, **kwargs)
    monkeypatch.setattr(interventions, "_run_rows", small_device)
    halved = interventions.sweep(session, SEED_PROMPT, groups, STRENGTHS)
    assert sizes == [8, 4, 2, 2, 2, 2]
    for a, b in zip(swept[0].outcomes, halved.outcomes, strict=True):
        torch.testing.assert_close(a.logits, b.logits, **TOL)


def test_result_target_json_and_table(session, groups, swept):
    from qwen_interp.apps.study.interventions import Intervention, evaluate
    result = swept[0]
    top1 = result.clean.top[0]
    assert result.target.id == top1.id and result.target.p == pytest.approx(top1.p)
    assert top1.token == session.model.tokenizer.decode([top1.id])
    third = result.clean.top[2]
    setting = [Intervention(groups[0], "scale", 2.0)]
    by_id = evaluate(session, SEED_PROMPT, setting, target=third.id)
    by_text = evaluate(session, SEED_PROMPT, setting, target=third.token)
    assert by_id.target.id == by_text.target.id == third.id
    assert by_id.outcomes[0].target_p == by_text.outcomes[0].target_p == pytest.approx(
        float(result.get("story", 2.0).logits.softmax(-1)[third.id]), abs=1e-6)
    with pytest.raises(ValueError, match="expected one token"):
        evaluate(session, SEED_PROMPT, setting, target=" the president of")

    record = json.loads(json.dumps(result.to_dict()))
    assert record["tokens"][0] == "<|endoftext|>" and len(record["tokens"]) == 16
    assert record["clean"]["target_p"] == pytest.approx(top1.p)
    assert [(i["group"], i["mode"], i["strength"]) for i in record["interventions"]] == [
        (g.name, "scale", s) for g in groups for s in STRENGTHS]
    assert record["sweeps"][1] == {"group": "other", "mode": "scale", "strengths": STRENGTHS,
                                   "target_p": [o.target_p for o in result.outcomes[4:]]}
    assert len(record["interventions"][0]["top"]) == 10

    lines = result.table().splitlines()
    assert len(lines) == 2 + 1 + 8
    assert lines[2].startswith("unsteered")
    assert f"{100 * top1.p:.1f}%" in lines[2] and repr(top1.token) in lines[2]
    assert lines[3].startswith("story") and "scale -1" in lines[3]
    assert lines[3].count("%") == 1 + 5


# --- bad input ----------------------------------------------------------------------------------
def node(layer, position, feature, dictionary="clt"):
    return SimpleNamespace(layer=layer, position=position, feature=feature,
                           dictionary=dictionary)


def test_bad_nodes_one_error_naming_each(session, clean):
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    on = set(active(clean))
    layer, pos, feat = sorted(on)[0]
    inactive = next(f for f in range(32) if (layer, pos, f) not in on)
    cases = {
        "feature out of range: the CLT has features 0..31": node(layer, pos, 32),
        "layer out of range: the CLT has layers 0..2": node(3, pos, feat),
        "position out of range: the prompt has positions 1..15": node(layer, 16, feat),
        "position 0 is the <|endoftext|> circuit-tracer prepends": node(layer, 0, feat),
        "not active there on this prompt": node(layer, pos, inactive),
        "no SAE attached for dictionary 'sae-x' or layer 1": node(1, pos, 3, "sae-x"),
        "feature out of range: the SAE has features 0..255": node(0, pos, 256, "sae-0"),
    }
    for why, bad in cases.items():
        g = SimpleNamespace(name="bad", nodes=[node(layer, pos, feat), bad])
        with pytest.raises(ValueError) as info:
            intervened_logits(clean, [Intervention(g, "ablate")])
        message = str(info.value)
        assert why in message, message
        assert "1 bad intervention node" in message
        assert f"L{bad.layer} feature {bad.feature} at position {bad.position}" in message
    everything = SimpleNamespace(name="all", nodes=list(cases.values()))
    with pytest.raises(ValueError, match=f"{len(cases)} bad intervention node"):
        Intervention(everything, "scale", 2.0).clt_tuples(clean)


def test_bad_mode_strength_and_group():
    from qwen_interp.apps.study.interventions import Intervention
    g = SimpleNamespace(name="g", nodes=[node(0, 1, 0)])
    with pytest.raises(ValueError, match="unknown intervention mode 'mute'; expected one of "
                                         "ablate, scale, clamp, add"):
        Intervention(g, "mute", 1.0)
    with pytest.raises(ValueError, match="finite"):
        Intervention(g, "scale", float("nan"))
    with pytest.raises(ValueError, match="at least one node"):
        Intervention(SimpleNamespace(name="empty", nodes=[]), "ablate")


# --- SAE features: Qwen-Scope's convention --------------------------------------------------------
@pytest.fixture(scope="module")
def sae_node(session, clean):
    """An SAE-0 feature active at a middle position of the prompt."""
    sae = session.saes[0]
    acts = clean.sae_acts[id(sae)]
    pos = 8
    feature = int(acts[pos].argmax())
    assert acts[pos, feature] > 0
    return sae, pos, feature


@torch.no_grad()
def run_with(model, tokens, edit, layer=0):
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_post",
                                 lambda h, hook: edit(h.clone()))]):
        return forward(model, tokens)


def test_sae_add_at_a_position_equals_a_hand_written_hook(session, clean, sae_node):
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    sae, pos, f = sae_node
    g = SimpleNamespace(name="sae", nodes=[node(0, pos, f, "qwen-scope/layer0")])

    def edit(h):
        h[:, pos] += 6.0 * sae.W_dec[f]
        return h
    ref = run_with(session.model, clean.tokens, edit)
    ours = intervened_logits(clean, [Intervention(g, "add", 6.0)])[0]
    torch.testing.assert_close(ours, ref, **TOL)
    assert max_diff(ref, clean.logits) > 1e-2


def test_sae_scale_at_a_position_equals_a_hand_written_hook(session, clean, sae_node):
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    sae, pos, f = sae_node
    g = SimpleNamespace(name="sae", nodes=[node(0, pos, f, "qwen-scope/layer0")])
    target = -3.0 * float(clean.sae_acts[id(sae)][pos, f])

    def edit(h):
        a = sae.encode(h[:, pos])[:, f]
        h[:, pos] += (target - a)[:, None] * sae.W_dec[f]
        return h
    ref = run_with(session.model, clean.tokens, edit)
    ours = intervened_logits(clean, [Intervention(g, "scale", -3.0)])[0]
    torch.testing.assert_close(ours, ref, **TOL)
    assert max_diff(ref, clean.logits) > 1e-2


def test_sae_all_positions_equal_the_steering_plugin(session, clean, sae_node):
    import qwen_interp_saelens as steering

    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    sae, _, f = sae_node
    g = SimpleNamespace(name="everywhere", nodes=[node(0, None, f, "qwen-scope/layer0")])
    model = session.model
    with session.steer(add={0: {f: 5.0}}):
        add = forward(model, clean.tokens)
    with steering.clamp(model, sae, {f: 2.0}):
        clamp = forward(model, clean.tokens)
    with steering.suppress(model, sae, [f]):
        ablate = forward(model, clean.tokens)
    ivs = [Intervention(g, "add", 5.0), Intervention(g, "clamp", 2.0), Intervention(g, "ablate")]
    ours = intervened_logits(clean, ivs)
    for row, ref in zip(ours, [add, clamp, ablate]):
        torch.testing.assert_close(row, ref, **TOL)
        assert max_diff(ref, clean.logits) > 1e-3


def test_clt_and_sae_in_one_group_and_one_batch(session, clean, groups, sae_node):
    """SAE edits active throughout circuit-tracer's call (its clean run for the frozen patterns
    included), as ``feature_intervention`` inside ``Session.steer``; rows with and without SAE
    edits share one batch."""
    from qwen_interp.apps.study.interventions import Intervention, intervened_logits
    sae, pos, f = sae_node
    mixed = SimpleNamespace(name="mixed", nodes=[*groups[0].nodes,
                                                 node(0, pos, f, "qwen-scope/layer0")])
    ivs = [Intervention(mixed, "add", 2.0), Intervention(groups[1], "ablate"),
           Intervention(mixed, "scale", -1.0)]
    ours = intervened_logits(clean, ivs)

    def reference(iv):
        (edit,) = iv.sae_edits(clean)
        model = session.model

        def hook(h, hook):
            h = h.clone()
            if edit.add:
                h[:, pos] += edit.value * sae.W_dec[f]
            else:
                h[:, pos] += (edit.value - sae.encode(h[:, pos])[:, f])[:, None] * sae.W_dec[f]
            return h
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", hook)]):
            return upstream(session, clean, iv)
    torch.testing.assert_close(ours[0], reference(ivs[0]), **TOL)
    torch.testing.assert_close(ours[1], upstream(session, clean, ivs[1]), **TOL)
    torch.testing.assert_close(ours[2], reference(ivs[2]), **TOL)
    assert max_diff(ours[0], clean.logits) > 1e-2
