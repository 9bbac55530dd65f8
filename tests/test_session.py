"""Session: one model in memory serving circuit-tracer, SAELens and TransformerLens in one pass.

References: HF transformers (logits), a separately loaded circuit-tracer ReplacementModel
(`get_activations`), a separately loaded SAELens HookedSAETransformer (`run_with_cache_with_saes`),
circuit-tracer's graph invariant (graph logit probabilities = the model's softmax). fp32, CPU,
the small offline Qwen3-1.7B-Base stand-in; tolerance 1e-4 unless stated.
"""

from __future__ import annotations

import pytest
import torch

from helpers import SEED_PROMPT, stand_in_dictionaries

LAYERS = [0, 2]


@pytest.fixture(scope="module")
def setup(qwen_offline_hub, qwen_registry):
    with stand_in_dictionaries(qwen_offline_hub, qwen_registry) as release:
        yield release


@pytest.fixture(scope="module")
def session(setup):
    from qwen_interp.apps.session import Session
    s = Session.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-1.7b", device="cpu")
    s.add_saes(setup.release, LAYERS)
    return s


def no_hooks_left(model) -> bool:
    """Only circuit-tracer's own permanent gradient hooks remain."""
    return all(h.is_permanent for hp in model.hook_dict.values()
               for h in (*hp.fwd_hooks, *hp.bwd_hooks))


def test_single_pass_equals_separate_tools(session, setup):
    from circuit_tracer import ReplacementModel
    from sae_lens import SAE, HookedSAETransformer
    from transformers import AutoModelForCausalLM

    embeds = []
    session.model.hook_dict["hook_embed"].add_hook(lambda act, hook: embeds.append(1))
    try:
        out = session.run(SEED_PROMPT)
    finally:
        session.model.reset_hooks()
    assert len(embeds) == 1  # one forward pass for logits, CLT and both SAEs

    hf = AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-1.7B-Base", dtype=torch.float32)
    with torch.no_grad():
        ref_logits = hf(out.tokens).logits
    assert (out.logits.log_softmax(-1) - ref_logits.log_softmax(-1)).abs().max() <= 1e-4

    ct = ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-1.7b",
                                          device=torch.device("cpu"))
    _, ct_acts = ct.get_activations(SEED_PROMPT)
    assert out.clt_features.shape[:2] == (3, 1)
    assert torch.allclose(out.clt_features[:, 0], ct_acts, atol=1e-4)
    assert (ct_acts > 0).sum() > 0

    hst = HookedSAETransformer.from_pretrained("Qwen/Qwen3-1.7B-Base", device="cpu")
    saes = [SAE.from_pretrained(setup.release, f"layer{n}", device="cpu") for n in LAYERS]
    # use_error_term: a spliced SAE must not change what later layers (and SAEs) see.
    _, cache = hst.run_with_cache_with_saes(out.tokens, saes=saes, use_error_term=True)
    for n in LAYERS:
        ref = cache[f"blocks.{n}.hook_resid_post.hook_sae_acts_post"]
        assert torch.allclose(out.sae_features[n], ref, atol=1e-4), n
        assert ((ref > 0).sum(-1) == setup.k).all()  # top-k of relu: exactly k active


def test_parameters_are_stored_once(session):
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel)
    from sae_lens import HookedSAETransformer
    from transformers import AutoModelForCausalLM
    model = session.model
    assert isinstance(model, TransformerLensReplacementModel)  # circuit-tracer's model
    assert isinstance(model, HookedSAETransformer)  # SAELens's model: the same object
    params = [p for name, p in model.named_parameters() if not name.startswith("transcoders.")]
    assert len({p.data_ptr() for p in params}) == len(params)  # no parameter held twice
    hf = AutoModelForCausalLM.from_pretrained("Qwen/Qwen3-1.7B-Base", dtype=torch.float32)
    hf_numel = sum(p.numel() for p in hf.parameters())
    # One copy of HF's weights (TL keeps the tied unembedding as its own matrix) plus TL's
    # all-zero biases; nothing else.
    tied = hf.lm_head.weight.numel() if hf.config.tie_word_embeddings else 0
    weights = [p for p in params if not bool((p == 0).all())]
    assert sum(p.numel() for p in weights) == hf_numel + tied
    # SAELens splicing and circuit-tracer's replacement wrappers reuse the same tensors.
    w_u = model.unembed.W_U.data_ptr()
    _, _ = model.run_with_cache_with_saes(session.tokens("hi"), saes=[session.saes[0]])
    assert model.unembed.W_U.data_ptr() == w_u and model.unembed.old_unembed.W_U.data_ptr() == w_u
    assert no_hooks_left(model)


def test_run_keeps_only_what_was_asked(session):
    calls = []
    session.model.hook_dict["blocks.2.hook_resid_post"].add_hook(lambda a, hook: calls.append(1))
    try:
        out = session.run(SEED_PROMPT, logits=False, clt=[0], saes=[0])
    finally:
        session.model.reset_hooks()
    assert out.logits is None and list(out.sae_features) == [0]
    assert out.clt_features.shape[0] == 1
    assert calls == []  # the pass stopped after layer 0
    dense = session.run(SEED_PROMPT)
    sparse = session.run(SEED_PROMPT, sparse=True)
    assert torch.equal(sparse.clt_features.to_dense(), dense.clt_features)
    assert torch.equal(sparse.sae_features[2].to_dense(), dense.sae_features[2])
    with pytest.raises(KeyError, match="no SAE attached at layers \\[1\\]"):
        session.run(SEED_PROMPT, saes=[1])


def test_steering_composes_and_attribution_describes_the_steered_model(session):
    base = session.run(SEED_PROMPT)
    # An active CLT feature at layer 0, position 3, switched off (circuit-tracer semantics).
    feature = int(base.clt_features[0, 0, 3].argmax())
    assert base.clt_features[0, 0, 3, feature] > 0
    ablate = [(0, 3, feature, 0.0)]
    with session.steer(add={2: {5: 10.0}}):
        steered = session.run(SEED_PROMPT)
        graph = session.attribute(SEED_PROMPT, max_n_logits=5, desired_logit_prob=0.9,
                                  batch_size=32)
        intervened, _ = session.model.feature_intervention(SEED_PROMPT, ablate)
    assert no_hooks_left(session.model)
    # Qwen-Scope convention: the SAE re-reads h + 10 W_dec[:, 5] (tied SAE: +10 pre-activation).
    assert (steered.logits - base.logits).abs().max() > 1e-2
    assert steered.sae_features[2][0, -1, 5] >= base.sae_features[2][0, -1, 5]
    # circuit-tracer invariant on the steered model.
    probs = steered.logits[0, -1].softmax(-1)
    ids = torch.tensor([t.vocab_idx for t in graph.logit_targets])
    assert torch.allclose(graph.logit_probabilities.cpu(), probs[ids], atol=1e-6)
    # A CLT intervention inside the steered model differs from steering alone.
    assert (intervened[0, -1] - steered.logits[0, -1]).abs().max() > 1e-4
    intervened_unsteered, _ = session.model.feature_intervention(SEED_PROMPT, ablate)
    assert (intervened[0, -1] - intervened_unsteered[0, -1]).abs().max() > 1e-2


def test_hooks_removed_after_exception(session):
    with pytest.raises(RuntimeError, match="boom"):
        with session.steer(add={0: {1: 3.0}}, clamp={2: {4: 0.0}}):
            session.run(SEED_PROMPT)
            raise RuntimeError("boom")
    assert no_hooks_left(session.model)
    with pytest.raises(KeyError, match="no SAE attached at layer 1"):
        with session.steer(add={1: {1: 1.0}}):
            pass
    assert no_hooks_left(session.model)
