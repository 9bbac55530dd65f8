"""Bounded-memory attribution (plugins/qwen_interp_circuit_tracer/active_decoders.py) builds the
same graph as circuit-tracer's own path (``QWEN_INTERP_BOUNDED_ATTRIBUTION=0``), on the small
offline Qwen3-1.7B-Base and its BluelightAI-layout CLT, fp32 on CPU, both backends.

Tolerance: the per-occurrence products are identical; each dot product may be summed in another
order, so |A_ours - A_upstream| <= 1e-5 * max|A| (fp32; measured ~1e-7); in bf16 (one test)
<= 1e-2 * max|A|. Node sets, selected features, logit targets and probabilities must be equal
exactly.
"""

from __future__ import annotations

import pytest
import torch
from helpers import SEED_PROMPT

MODEL = "Qwen/Qwen3-1.7B-Base"
RELEASE = "bluelightai/clt-qwen3-1.7b-base-20k"
CPU = torch.device("cpu")
RTOL = 1e-5
BF16_RTOL = 1e-2
LONGER_PROMPT = SEED_PROMPT + " Barack Obama, and in 1985 it was Ronald Reagan; in 1995"


@pytest.fixture(scope="module")
def models(qwen_offline_hub, qwen_registry):
    from circuit_tracer import ReplacementModel
    qwen_offline_hub.transcoder(qwen_registry.transcoder_release(RELEASE),
                                qwen_registry.model(MODEL))
    return {backend: ReplacementModel.from_pretrained(MODEL, RELEASE, backend=backend,
                                                      device=CPU, dtype=torch.float32)
            for backend in ("transformerlens", "nnsight")}


def graph(model, prompt, monkeypatch, bounded: bool, workspace_mb=None, **kwargs):
    from circuit_tracer import attribute
    monkeypatch.setenv("QWEN_INTERP_BOUNDED_ATTRIBUTION", "1" if bounded else "0")
    if workspace_mb is None:
        monkeypatch.delenv("QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB", raising=False)
    else:
        monkeypatch.setenv("QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB", str(workspace_mb))
    return attribute(prompt, model, **kwargs)


def bounded_setup(model, tokens, monkeypatch):
    """``setup_attribution`` as attribute() runs it: only there are the components bounded."""
    from qwen_interp_circuit_tracer.attribution import attribute_call
    monkeypatch.setenv("QWEN_INTERP_BOUNDED_ATTRIBUTION", "1")
    with attribute_call(offload=None):
        return model.setup_attribution(tokens)


def assert_same_graph(ours, ref, rtol=RTOL, edges_present=True):
    assert torch.equal(ours.input_tokens.cpu(), ref.input_tokens.cpu())
    assert torch.equal(ours.active_features, ref.active_features)
    assert torch.equal(ours.activation_values, ref.activation_values)
    assert torch.equal(ours.selected_features, ref.selected_features)
    assert [t.vocab_idx for t in ours.logit_targets] == [t.vocab_idx for t in ref.logit_targets]
    assert torch.equal(ours.logit_probabilities, ref.logit_probabilities)
    A, B = ours.adjacency_matrix, ref.adjacency_matrix
    assert A.shape == B.shape and B.abs().max() > 0.1
    if edges_present:
        assert torch.equal(A != 0, B != 0)  # same edges present
    assert (A - B).abs().max() <= rtol * B.abs().max()


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_same_graph_as_upstream_all_features(models, backend, monkeypatch):
    model = models[backend]
    ref = graph(model, SEED_PROMPT, monkeypatch, bounded=False, batch_size=64)
    ours = graph(model, SEED_PROMPT, monkeypatch, bounded=True, batch_size=64)
    assert ref.active_features.shape[0] > 200
    assert_same_graph(ours, ref)


@pytest.fixture(scope="module")
def bf16_model(models):
    from circuit_tracer import ReplacementModel
    return ReplacementModel.from_pretrained(MODEL, RELEASE, device=CPU, dtype=torch.bfloat16)


def test_same_graph_as_upstream_in_bf16(bf16_model, monkeypatch):
    """bf16, the dtype of real runs: both paths round every score to bf16 and sum each dot product
    in their own order, so edges agree to bf16 precision, not bitwise: |A_ours - A_upstream| <=
    BF16_RTOL * max|A| (bf16 spacing is 2^-8 = 3.9e-3 relative; measured 4.8e-3, and 17 of 88,002
    edges present on one side only). All features are kept, so node sets, logits and their
    probabilities must be equal exactly."""
    model = bf16_model
    ref = graph(model, LONGER_PROMPT, monkeypatch, bounded=False, batch_size=64)
    ours = graph(model, LONGER_PROMPT, monkeypatch, bounded=True, batch_size=64)
    # An edge present on one side only is a cancellation to ~0 there, bounded by the same rtol.
    assert_same_graph(ours, ref, rtol=BF16_RTOL, edges_present=False)


def test_same_graph_with_feature_budget_and_tiny_workspace(models, monkeypatch):
    """max_feature_nodes < active features exercises the influence ranking; a 4 KB workspace
    forces one position per scoring block and one occurrence per reconstruction block."""
    model = models["transformerlens"]
    kwargs = dict(batch_size=32, max_feature_nodes=150, update_interval=2)
    ref = graph(model, LONGER_PROMPT, monkeypatch, bounded=False, **kwargs)
    ours = graph(model, LONGER_PROMPT, monkeypatch, bounded=True, workspace_mb=0.004, **kwargs)
    assert len(ref.selected_features) == 150 < ref.active_features.shape[0]
    assert_same_graph(ours, ref)


@pytest.mark.parametrize("offload", ["cpu", "disk"])
def test_same_graph_when_attribute_offloads_the_transcoder(models, offload, monkeypatch):
    """offload= moves the transcoder off the device after setup: encoder rows must not be
    looked up in it then (disk offload leaves it on the meta device)."""
    model = models["transformerlens"]
    ref = graph(model, SEED_PROMPT, monkeypatch, bounded=False, batch_size=64, offload=offload)
    ours = graph(model, SEED_PROMPT, monkeypatch, bounded=True, batch_size=64, offload=offload)
    assert_same_graph(ours, ref)


def test_active_rows_are_read_once(models, monkeypatch):
    """The stored decoder rows: one per (source layer, active feature), not one per occurrence;
    the reconstruction equals upstream's (same index_add_ order: bitwise on CPU)."""
    model = models["transformerlens"]
    clt = model.transcoders
    tokens = model.ensure_tokenized(LONGER_PROMPT)
    ctx_ref = model.setup_attribution(tokens)  # outside attribute(): upstream's components
    ctx = bounded_setup(model, tokens, monkeypatch)
    decoders = ctx.decoder_vecs
    layers, _, feats = ctx.activation_matrix.indices()
    unique = sum(len(feats[layers == l].unique()) * (clt.n_layers - l) for l in range(clt.n_layers))
    assert sum(s.rows.shape[0] * s.rows.shape[1] for s in decoders.sources) == unique
    assert unique < ctx_ref.decoder_vecs.shape[0]  # features recur across positions
    locations, vecs, node_ids = decoders.occurrence_rows()  # upstream's layout, same values
    assert torch.equal(locations, ctx_ref.decoder_locations)
    assert torch.equal(vecs, ctx_ref.decoder_vecs)
    assert torch.equal(node_ids, ctx_ref.encoder_to_decoder_map)
    assert torch.equal(ctx.error_vectors, ctx_ref.error_vectors)
    from qwen_interp_circuit_tracer.active_decoders import ActiveEncoders, attribution_components
    mlp_in = torch.randn(clt.n_layers, len(tokens), clt.d_model)
    looked_up = attribution_components(clt, mlp_in, lookup_encoders=True)["encoder_vecs"]
    copied = attribution_components(clt, mlp_in)["encoder_vecs"]
    assert isinstance(looked_up, ActiveEncoders) and looked_up.shape == copied.shape
    assert torch.equal(looked_up[torch.arange(len(copied))], copied)


def test_workspace_setting_is_checked(monkeypatch):
    from qwen_interp_circuit_tracer.attribution import workspace_bytes
    monkeypatch.setenv("QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB", "lots")
    with pytest.raises(ValueError, match="QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB"):
        workspace_bytes()
    monkeypatch.setenv("QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB", "64")
    assert workspace_bytes() == 64 * 2**20


def test_partial_influences_match_upstream_in_small_column_blocks():
    """The ranking used by max_feature_nodes: bounded version vs circuit-tracer's, on a random
    DAG-shaped edge matrix (fp32, CPU), with a workspace that forces 1-column blocks."""
    from circuit_tracer.graph import compute_partial_influences as upstream
    from qwen_interp_circuit_tracer.bounded_influences import compute_partial_influences
    g = torch.Generator().manual_seed(0)
    n_feat, n_other, n_logits = 300, 40, 5
    n_cols = n_feat + n_other + n_logits
    visited = torch.randperm(n_feat, generator=g)[:120]
    rows = torch.cat([torch.arange(n_feat + n_other, n_cols), visited]).to(torch.int32)
    E = (torch.randn(len(rows), n_cols, generator=g)
         * (torch.rand(len(rows), n_cols, generator=g) < 0.3))
    E[:, n_feat + n_other:] = 0  # nothing points at a logit
    for i, node in enumerate(rows.tolist()):  # a feature reads only from lower-numbered nodes
        if node < n_feat:
            E[i, node:n_feat] = 0
    E[7] = 0  # a visited feature with no incoming edges
    logit_p = torch.softmax(torch.randn(n_logits, generator=g), 0)
    ref = upstream(E, logit_p, rows, device="cpu")
    ours = compute_partial_influences(E, logit_p, rows, device="cpu", workspace_bytes=4)
    assert ref.abs().max() > 0
    # attribute() ranks a growing matrix: row sums cached from a shorter prefix give the same
    cache = {}
    compute_partial_influences(E[:80], logit_p, rows[:80], device="cpu", row_sum_cache=cache)
    assert len(cache["sums"]) == 80
    cached = compute_partial_influences(E, logit_p, rows, device="cpu", row_sum_cache=cache)
    fresh = compute_partial_influences(E, logit_p, rows, device="cpu")
    assert len(cache["sums"]) == len(rows) and torch.equal(cached, fresh)
    assert (ours - ref).abs().max() <= 1e-6 * ref.abs().max()
    assert torch.equal(ours == 0, ref == 0)
    assert torch.equal(torch.argsort(ours[:n_feat], descending=True)[:60],
                       torch.argsort(ref[:n_feat], descending=True)[:60])


@pytest.mark.slow
@pytest.mark.subprocess
def test_deactivate_restores_upstream_and_activation_is_idempotent():
    from helpers import run_python
    out = run_python("""
import json, qwen_interp
import circuit_tracer.attribution.attribute as attribute
import circuit_tracer.attribution.context_nnsight as nn
import circuit_tracer.attribution.context_transformerlens as tl
import circuit_tracer.replacement_model.replacement_model_transformerlens as tlm
import circuit_tracer.transcoder.cross_layer_transcoder as clt
targets = [(clt.CrossLayerTranscoder, "compute_attribution_components"),
           (tl.AttributionContext, "_make_attribution_hooks"),
           (nn.AttributionContext, "compute_feature_attributions"),
           (attribute, "compute_partial_influences"), (attribute, "_run_attribution"),
           (tlm.TransformerLensReplacementModel, "run_forward_pass")]
get = lambda o, n: o.__dict__[n] if isinstance(o, type) else getattr(o, n)
wrapped = [get(o, n) for o, n in targets]
originals = [w.__qwen_interp_original__ for w in wrapped]
qwen_interp.activate(); qwen_interp.activate()
again = all(get(o, n) is w for (o, n), w in zip(targets, wrapped))
qwen_interp.deactivate()
restored = all(get(o, n) is orig for (o, n), orig in zip(targets, originals))
print(json.dumps([again, restored]))
""")
    assert out.stdout.strip().splitlines()[-1] == "[true, true]"


@pytest.mark.parametrize("workspace", [None, 4096])
def test_scores_follow_the_per_occurrence_formula(models, monkeypatch, workspace):
    """score_into against the formula on upstream's per-occurrence layout: node n gains
    <grads[:, pos(n)], activation * decoder row(n -> l)> at output layer l (fp32, rtol 1e-5).
    All source layers of an output layer share one batched matmul per position block: one
    block with the default workspace, one per position with a 4 KB one."""
    model = models["transformerlens"]
    decoders = bounded_setup(model, model.ensure_tokenized(LONGER_PROMPT), monkeypatch).decoder_vecs
    if workspace is not None:
        decoders.workspace_bytes = workspace
    locations, vecs, node_ids = decoders.occurrence_rows()
    n_nodes = sum(len(s.values) for s in decoders.sources)
    grads = torch.randn(3, decoders.n_pos, decoders.d_model)
    bmm_calls = []
    real_bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *a: bmm_calls.append(1) or real_bmm(*a))
    for layer in range(decoders.n_layers):
        bmm_calls.clear()
        ours = torch.zeros(n_nodes, 3)
        decoders.score_into(ours, grads, layer)
        hit = locations[0] == layer
        ref = torch.zeros(n_nodes, 3).index_add_(
            0, node_ids[hit], torch.einsum("bmd,md->mb", grads[:, locations[1][hit]], vecs[hit]))
        assert ours.abs().max() > 0
        assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5 * ref.abs().max())
        positions = locations[1][hit].unique()
        assert len(bmm_calls) == (1 if workspace is None else len(positions))


def test_compute_attribution_components_keeps_upstreams_contract(models, monkeypatch):
    """Called directly (not by attribute()), the public method returns upstream's components,
    tensor for tensor, with the adapter active and the bounded path enabled."""
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder
    monkeypatch.setenv("QWEN_INTERP_BOUNDED_ATTRIBUTION", "1")
    clt = models["transformerlens"].transcoders
    upstream = (CrossLayerTranscoder.__dict__["compute_attribution_components"]
                .__qwen_interp_original__)
    inputs = torch.randn(clt.n_layers, 12, clt.d_model, generator=torch.Generator().manual_seed(1))
    ours = clt.compute_attribution_components(inputs)
    ref = upstream(clt, inputs)
    assert ours.keys() == ref.keys()
    for key in ref:
        a, b = ours[key], ref[key]
        assert type(a) is type(b), key
        assert torch.equal(a.to_dense(), b.to_dense()) if a.is_sparse else torch.equal(a, b), key
    assert ours["decoder_vecs"].shape[0] > ours["encoder_vecs"].shape[0] > 0


@pytest.mark.parametrize("workspace", [None, 4096])
def test_reconstruction_is_upstreams_bit_for_bit_in_bf16(bf16_model, monkeypatch, workspace):
    """bf16: attribute()'s bounded components give the same error vectors, hence the same error
    nodes, as upstream's single index_add_, with the default workspace and with one so small
    that every position is its own block."""
    tokens = bf16_model.ensure_tokenized(LONGER_PROMPT)
    ref = bf16_model.setup_attribution(tokens)
    if workspace is None:
        monkeypatch.delenv("QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB", raising=False)
    else:
        monkeypatch.setenv("QWEN_INTERP_ATTRIBUTION_WORKSPACE_MB", str(workspace / 2**20))
    ours = bounded_setup(bf16_model, tokens, monkeypatch)
    assert type(ours.decoder_vecs).__name__ == "ActiveDecoders"
    assert ours.error_vectors.dtype == torch.bfloat16
    assert torch.equal(ours.error_vectors, ref.error_vectors)


def test_shared_pattern_only_for_transformerlens_attention(models):
    """The shared pattern reproduces TransformerLens's own z computation; an attention class
    with its own keeps running it."""
    from qwen_interp_circuit_tracer.shared_patterns import reproduces_z
    attn = models["transformerlens"].blocks[0].attn
    assert reproduces_z(attn)
    custom = type("CustomAttention", (type(attn),), {"calculate_z_scores": lambda self, v, p: v})
    assert not reproduces_z(custom.__new__(custom))
