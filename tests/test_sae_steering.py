"""Steering with Qwen-Scope features (h += strength * W_dec[:, f] at the layer output), clamp and
suppress: on the small offline Qwen3-1.7B-Base with a tied test SAE (W_enc = W_dec.T, unit
decoder columns), in TransformerLens (forward and generate) and HF transformers.

The expected direction: a feature's decoder column promotes the token T = argmax(W_dec[:, f] @ W_U)
(logit lens), so steering f up must raise log p(T), steering down must lower it, and suppressing
an active feature must lower its T."""

from __future__ import annotations

import pytest
import torch

import qwen_interp
from helpers import SEED_PROMPT

MODEL = "Qwen/Qwen3-1.7B-Base"


@pytest.fixture(scope="module")
def _private_cache(tmp_path_factory):
    # Module scope: the module fixture below already loads SAEs (and so writes the cache).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWEN_INTERP_CACHE", str(tmp_path_factory.getbasetemp() / "qwen-cache"))
        yield


@pytest.fixture(scope="module")
def setup(_private_cache, qwen_offline_hub, qwen_registry):
    from sae_lens import SAE, HookedSAETransformer
    from qwen_interp.apps.testing.sae_hub import SAEReleasePlugin, qwen_scope_snapshot, tiny_release
    spec = qwen_registry.model(MODEL)
    qwen_offline_hub.model(spec)
    rel = tiny_release(spec, tied=True)
    qwen_scope_snapshot(qwen_offline_hub, rel, range(3), tied=True)
    plugin = SAEReleasePlugin([rel])
    qwen_interp.register_plugin(plugin)
    model = HookedSAETransformer.from_pretrained(MODEL, device="cpu", dtype=torch.float32)
    saes = {n: SAE.from_pretrained(rel.release, f"layer{n}") for n in range(3)}
    ids = model.to_tokens(SEED_PROMPT, prepend_bos=False)
    yield model, saes, ids
    qwen_interp.unregister_plugin(plugin)


def no_hooks(model) -> bool:
    return all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


def last_logprobs(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0, -1].log_softmax(-1)


def promoted_token(model, sae, f: int) -> int:
    return int((sae.W_dec[f] @ model.W_U).argmax())


@pytest.mark.parametrize("layer", [1, 2])
def test_steering_moves_next_token_in_feature_direction(setup, layer):
    import qwen_interp_saelens as q
    model, saes, ids = setup
    sae = saes[layer]
    for f in (0, 1, 2):
        T = promoted_token(model, sae, f)
        lps = []
        for strength in (-8.0, 0.0, 8.0, 32.0):
            with q.steer(model, sae, {f: strength}):
                lps.append(last_logprobs(model, ids)[T].item())
        assert lps == sorted(lps) and lps[-1] - lps[1] > 3, (f, lps)
    assert no_hooks(model)


def test_steer_adds_decoder_column_at_layer_output(setup):
    """Exactly the Qwen-Scope convention: h + strength * W_dec[:, f] (SAELens: W_dec[f])."""
    import qwen_interp_saelens as q
    model, saes, ids = setup
    name = "blocks.1.hook_resid_post"
    _, clean = model.run_with_cache(ids, names_filter=name)
    with q.steer(model, saes[1], {3: 2.5, 7: -1.0}):
        _, steered = model.run_with_cache(ids, names_filter=name)
    want = clean[name] + 2.5 * saes[1].W_dec[3] - 1.0 * saes[1].W_dec[7]
    assert (steered[name] - want).abs().max().item() <= 1e-5


def test_steering_during_generate_and_hooks_gone_after(setup):
    import qwen_interp_saelens as q
    model, saes, ids = setup
    sae, f = saes[2], 1
    T = promoted_token(model, sae, f)
    kwargs = dict(max_new_tokens=4, do_sample=False, verbose=False, use_past_kv_cache=True)
    clean = model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
    with q.steer(model, sae, {f: 64.0}):
        steered = model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
    assert steered == [T] * 4 and clean != steered
    assert no_hooks(model)
    assert model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist() == clean


def test_suppress_removes_an_active_feature(setup):
    import qwen_interp_saelens as q
    model, saes, ids = setup
    sae, name = saes[2], "blocks.2.hook_resid_post"
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=name)
        acts = sae.encode(cache[name][0])
    f = int(acts[-1].argmax())  # the strongest feature at the last position
    T = promoted_token(model, sae, f)
    before = last_logprobs(model, ids)[T].item()
    with q.suppress(model, sae, [f]):
        with torch.no_grad():
            _, edited = model.run_with_cache(ids, names_filter=name)
            after_acts = sae.encode(edited[name][0])
        after = last_logprobs(model, ids)[T].item()
    assert acts[:, f].max() > 0
    assert after_acts[:, f].abs().max().item() <= 1e-4  # re-encoded: gone everywhere
    assert after < before - 0.5, (before, after)
    assert no_hooks(model)


def test_clamp_sets_activation_keeping_error(setup):
    import qwen_interp_saelens as q
    model, saes, ids = setup
    sae, name, f = saes[1], "blocks.1.hook_resid_post", 5
    with torch.no_grad():
        _, clean = model.run_with_cache(ids, names_filter=name)
        with q.clamp(model, sae, {f: 4.0}):
            _, edited = model.run_with_cache(ids, names_filter=name)
        a = sae.encode(clean[name])[..., f:f + 1]
    want = clean[name] + (4.0 - a) * sae.W_dec[f]
    assert (edited[name] - want).abs().max().item() <= 1e-5
    assert (edited[name] - clean[name]).abs().max().item() > 1.0


def test_hooks_removed_when_body_raises(setup):
    import qwen_interp_saelens as q
    model, saes, ids = setup
    clean = last_logprobs(model, ids)
    for helper in (lambda: q.steer(model, saes[0], {0: 10.0}),
                   lambda: q.clamp(model, saes[0], {0: 10.0}),
                   lambda: q.suppress(model, saes[0], [0])):
        with pytest.raises(RuntimeError, match="boom"):
            with helper():
                model(ids)
                raise RuntimeError("boom")
        assert no_hooks(model)
        assert torch.equal(last_logprobs(model, ids), clean)


def test_hf_model_steering_matches_transformerlens(setup):
    """The same helpers on an HF Qwen3ForCausalLM (forward hook on model.layers[n])."""
    import qwen_interp_saelens as q
    from transformers import AutoModelForCausalLM
    model, saes, ids = setup
    hf = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32)
    layer = hf.model.layers[1]
    for helper in (q.steer, q.clamp):
        with helper(model, saes[1], {2: 6.0}):
            tl_lp = last_logprobs(model, ids)
        with helper(hf, saes[1], {2: 6.0}):
            with torch.no_grad():
                hf_lp = hf(ids).logits[0, -1].log_softmax(-1)
        assert not layer._forward_hooks
        assert (tl_lp - hf_lp).abs().max().item() <= 1e-4
    with pytest.raises(RuntimeError, match="boom"):
        with q.steer(hf, saes[1], {2: 6.0}):
            raise RuntimeError("boom")
    assert not layer._forward_hooks


def test_wrong_model_and_feature_refused(setup, qwen_offline_hub, qwen_registry):
    import qwen_interp_saelens as q
    model, saes, ids = setup
    with pytest.raises(IndexError, match="out of range"):
        with q.steer(model, saes[0], {256: 1.0}):
            pass
    saes[0].cfg.metadata.model_name, old = "Qwen/Qwen3-8B-Base", saes[0].cfg.metadata.model_name
    try:
        with pytest.raises(q.SAEModelMismatchError):
            with q.steer(model, saes[0], {0: 1.0}):
                pass
    finally:
        saes[0].cfg.metadata.model_name = old
    assert no_hooks(model)


def test_steer_with_the_sae_spliced_in(setup):
    """With the SAE attached (error term on), steering edits the SAE's output: same result."""
    import qwen_interp_saelens as q
    model, saes, ids = setup
    with q.steer(model, saes[1], {0: 8.0}):
        plain = last_logprobs(model, ids)
    model.add_sae(saes[1], use_error_term=True)
    try:
        assert "blocks.1.hook_resid_post" not in model.hook_dict
        with q.steer(model, saes[1], {0: 8.0}):
            spliced = last_logprobs(model, ids)
    finally:
        model.reset_saes()
    assert (plain - spliced).abs().max().item() <= 1e-4
    assert (plain - last_logprobs(model, ids)).abs().max().item() > 1.0
    assert no_hooks(model)
