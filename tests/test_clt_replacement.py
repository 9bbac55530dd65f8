"""BluelightAI CLTs in circuit-tracer on the small offline Qwen3-1.7B-Base, both backends.

References: the HF model itself (forward hooks), the formulas of docs/formats.md on the tensors
read from the CLT files, and circuit-tracer's own invariants.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from helpers import SEED_PROMPT

MODEL = "Qwen/Qwen3-1.7B-Base"
RELEASE = "bluelightai/clt-qwen3-1.7b-base-20k"
CPU = torch.device("cpu")
# TL and nnsight graphs: max |A_tl - A_nnsight| <= GRAPH_RTOL * max |A| (fp32; measured ~1e-6).
GRAPH_RTOL = 1e-5


@pytest.fixture(scope="module")
def clt_dir(qwen_offline_hub, qwen_registry):
    spec = qwen_registry.model(MODEL)
    return qwen_offline_hub.transcoder(qwen_registry.transcoder_release(RELEASE), spec)


@pytest.fixture(scope="module")
def tl_model(clt_dir):
    from circuit_tracer import ReplacementModel
    return ReplacementModel.from_pretrained(MODEL, "bluelight-qwen3-1.7b", device=CPU,
                                            dtype=torch.float32)


@pytest.fixture(scope="module")
def nn_model(clt_dir):
    from circuit_tracer import ReplacementModel
    return ReplacementModel.from_pretrained(MODEL, RELEASE, backend="nnsight", device=CPU,
                                            dtype=torch.float32)


@pytest.fixture(scope="module")
def hf(clt_dir):  # clt_dir builds the model's offline snapshot too
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ids(tl_model):
    return tl_model.ensure_tokenized(SEED_PROMPT)


def hf_run(hf, ids, replace=None, add=None, capture_input_of="mlp"):
    """HF logits and each layer's MLP input; ``replace[l]`` overwrites positions 1: of layer l's
    MLP output, ``add[l]`` is added to it."""
    inputs = {}
    hooks = []
    for l, layer in enumerate(hf.model.layers):
        mod = getattr(layer, capture_input_of)
        hooks.append(mod.register_forward_hook(
            lambda m, a, o, l=l: inputs.__setitem__(l, a[0][0].detach())))

        def edit(m, a, o, l=l):
            o = o.clone()
            if replace is not None:
                o[0, 1:] = replace[l][1:]
            if add is not None:
                o[0] += add[l]
            return o
        hooks.append(layer.mlp.register_forward_hook(edit))
    with torch.no_grad():
        logits = hf(ids[None]).logits[0]
    for h in hooks:
        h.remove()
    return logits, torch.stack([inputs[l] for l in range(len(inputs))])


def clt_tensors(folder, n_layers):
    from safetensors.torch import load_file
    enc = [load_file(str(folder / f"W_enc_{l}.safetensors")) for l in range(n_layers)]
    dec = [load_file(str(folder / f"W_dec_{l}.safetensors"))[f"W_dec_{l}"].float()
           for l in range(n_layers)]
    return enc, dec


def formula_acts(enc, xs):
    """docs/formats.md (circuit-tracer layout): pre = x @ W_enc.T + b_enc;
    f = pre * (pre > threshold)."""
    out = []
    for l, x in enumerate(xs):
        e = {k.rsplit("_", 1)[0]: v.float() for k, v in enc[l].items()}
        pre = x @ e["W_enc"].T + e["b_enc"]
        out.append(pre * (pre > e["threshold"]))
    return torch.stack(out)


def test_loads_by_repo_id_and_alias_on_both_backends(tl_model, nn_model):
    for model in (tl_model, nn_model):
        clt = getattr(model.transcoders, "_module", model.transcoders)  # nnsight wraps it
        assert (clt.feature_input_hook, clt.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
        assert model.scan == RELEASE
        assert clt.W_dec is None  # lazy decoder by default


def test_first_position_is_endoftext(tl_model, nn_model, ids):
    """Decision: position 0 is a prepended <|endoftext|> (151643) whose features are zeroed,
    in every API, so positions match graph positions."""
    plain = tl_model.tokenizer(SEED_PROMPT, add_special_tokens=False).input_ids
    assert ids.tolist() == [151643, *plain]
    assert tl_model.ensure_tokenized("<|endoftext|>" + SEED_PROMPT).tolist() == ids.tolist()
    for model in (tl_model, nn_model):
        _, from_text = model.get_activations(SEED_PROMPT)
        _, from_ids = model.get_activations(ids[None])
        assert from_text.shape[1] == len(ids)
        torch.testing.assert_close(from_text, from_ids)
        assert from_text[:, 0].abs().sum() == 0 and from_text[:, 1:].abs().sum() > 0
        # Already starting with the special token: not prepended twice.
        _, again = model.get_activations("<|endoftext|>" + SEED_PROMPT)
        torch.testing.assert_close(again, from_text)


def test_activations_match_formula_on_hf_inputs(tl_model, nn_model, hf, ids, clt_dir):
    n = hf.config.num_hidden_layers
    _, xs = hf_run(hf, ids)
    ref = formula_acts(clt_tensors(clt_dir, n)[0], xs)
    ref[:, 0] = 0
    assert (ref > 0).sum() > 20
    for model in (tl_model, nn_model):
        _, acts = model.get_activations(ids[None])
        torch.testing.assert_close(acts, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_error_nodes_reproduce_logits(backend, tl_model, nn_model, hf, ids, clt_dir):
    """Feature nodes (decoder vectors x activations) + CLT bias + error nodes rebuild every MLP
    output; the HF model run on them gives back its own logits."""
    model = tl_model if backend == "transformerlens" else nn_model
    n = hf.config.num_hidden_layers
    ctx = model.setup_attribution(ids)
    enc, _ = clt_tensors(clt_dir, n)
    n_pos, d = len(ids), hf.config.hidden_size
    locations, vecs = ctx.decoder_locations, ctx.decoder_vecs
    if not isinstance(vecs, torch.Tensor):  # qwen-interp's bounded attribution: ActiveDecoders
        locations, vecs, _ = vecs.occurrence_rows()
    flat = locations[0] * n_pos + locations[1]
    from_features = torch.zeros(n * n_pos, d).index_add_(0, flat, vecs.float())
    b_dec = torch.stack([enc[l][f"b_dec_{l}"].float() for l in range(n)])
    recon = from_features.reshape(n, n_pos, d) + b_dec[:, None]
    original, _ = hf_run(hf, ids)
    rebuilt, _ = hf_run(hf, ids, replace=recon + ctx.error_vectors)
    lp = lambda x: x.log_softmax(-1)  # noqa: E731
    assert (lp(rebuilt) - lp(original)).abs().max() < 1e-4
    without_errors, _ = hf_run(hf, ids, replace=recon)
    assert (lp(without_errors) - lp(original)).abs().max() > 1e-2  # the check is not vacuous


def test_tl_and_nnsight_graphs_agree(tl_model, nn_model):
    from circuit_tracer import attribute
    g_tl = attribute(SEED_PROMPT, tl_model, batch_size=128)
    g_nn = attribute(SEED_PROMPT, nn_model, batch_size=128)
    assert torch.equal(g_tl.input_tokens.cpu(), g_nn.input_tokens.cpu())
    assert torch.equal(g_tl.active_features, g_nn.active_features)
    assert torch.equal(g_tl.logit_targets_tensor if hasattr(g_tl, "logit_targets_tensor")
                       else torch.tensor([t.vocab_idx for t in g_tl.logit_targets]),
                       g_nn.logit_targets_tensor if hasattr(g_nn, "logit_targets_tensor")
                       else torch.tensor([t.vocab_idx for t in g_nn.logit_targets]))
    A, B = g_tl.adjacency_matrix, g_nn.adjacency_matrix
    assert A.shape == B.shape and A.abs().max() > 0.1
    assert (A - B).abs().max() <= GRAPH_RTOL * A.abs().max()
    assert (g_tl.active_features[:, 1] > 0).all()  # nothing at the <|endoftext|> position


@pytest.mark.parametrize("backend", ["transformerlens", "nnsight"])
def test_feature_intervention_semantics(backend, tl_model, nn_model, hf, ids, clt_dir):
    """circuit-tracer: setting feature (l, p, f) to v adds (v - a) * W_dec_l[f, m - l] to the MLP
    output of every layer m >= l at position p. Checked at the last layer against HF."""
    model = tl_model if backend == "transformerlens" else nn_model
    n = hf.config.num_hidden_layers
    enc, dec = clt_tensors(clt_dir, n)
    original, xs = hf_run(hf, ids)
    acts = formula_acts(enc, xs)
    layer, pos = n - 1, len(ids) - 1
    feat = int(acts[layer, pos].argmax())
    a = float(acts[layer, pos, feat])
    assert a > 0
    value = a + 3.0
    add = torch.zeros(n, len(ids), hf.config.hidden_size)
    add[layer, pos] = (value - a) * dec[layer][feat, 0]
    expected, _ = hf_run(hf, ids, add=add)
    logits, _ = model.feature_intervention(ids[None], [(layer, pos, feat, value)])
    logits = logits.reshape(-1, logits.shape[-1])
    lp = lambda x: x.log_softmax(-1)  # noqa: E731
    assert (lp(logits) - lp(expected)).abs().max() < 1e-4
    assert (lp(expected) - lp(original)).abs().max() > 1e-2
    # A string prompt means the same positions (the <|endoftext|> prefix is added for Qwen).
    from_text, _ = model.feature_intervention(SEED_PROMPT, [(layer, pos, feat, value)])
    torch.testing.assert_close(from_text.reshape(logits.shape), logits)


def test_nnsight_resid_mid_and_mlp_out_hooks(qwen_offline_hub, clt_dir, tmp_path):
    """A CLT on hook_resid_mid -> hook_mlp_out: circuit-tracer's Qwen3 nnsight mapping lacks
    both; with the adapter the nnsight activations equal TL's."""
    import shutil

    import yaml
    from circuit_tracer import ReplacementModel
    folder = tmp_path / "clt"
    shutil.copytree(clt_dir, folder)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    cfg.update(feature_input_hook="hook_resid_mid", feature_output_hook="hook_mlp_out")
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    acts = []
    for backend in ("transformerlens", "nnsight"):
        model = ReplacementModel.from_pretrained(MODEL, str(folder), backend=backend, device=CPU,
                                                 dtype=torch.float32)
        acts.append(model.get_activations(SEED_PROMPT)[1])
        del model
    assert acts[0].abs().sum() > 0
    torch.testing.assert_close(acts[0], acts[1], atol=1e-4, rtol=1e-4)


def test_release_without_config_yaml_takes_hooks_from_registry(qwen_offline_hub, qwen_registry):
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    from qwen_interp.apps.testing.hub import write_hub_clt
    spec = qwen_registry.model("Qwen/Qwen3-0.6B-Base")
    release = qwen_registry.transcoder_release("bluelight-qwen3-0.6b")
    model_dir = qwen_offline_hub.model(spec)

    snap = qwen_offline_hub.snapshot(
        release.repo_id, lambda folder: write_hub_clt(folder, release, model_dir, 16, 0.15))
    # The snapshot is shared with other tests of this session, which need its config.yaml:
    # hide that file for this test only and put it back afterwards.
    config_yaml = snap / "config.yaml"
    hidden = snap / ".config.yaml.hidden"
    config_yaml.rename(hidden)
    try:
        assert not config_yaml.exists()
        clt, config = load_transcoder_from_hub("bluelight-qwen3-0.6b", device=CPU)
    finally:
        if hidden.exists():
            hidden.rename(config_yaml)
    assert (clt.feature_input_hook, clt.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
    with safe_open(snap / "W_enc_0.safetensors", "pt") as f:
        width = f.get_slice("W_enc_0").get_shape()[0]
    assert config["repo_id"] == release.repo_id and clt.d_transcoder == width


@pytest.mark.parametrize("activation", ["topk", "topk_all"])
def test_topk_clt_attribution(activation, hf, ids, tmp_path, monkeypatch):
    """Native top-k CLTs: attribute() runs and its active set is the formula's top-k set."""
    from circuit_tracer import ReplacementModel, attribute
    from qwen_interp.apps.testing.clt_native import random_clt, write_native
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))
    n, d, k = hf.config.num_hidden_layers, hf.config.hidden_size, 4
    raw = random_clt(n, d, 32, seed=11)
    src = write_native(tmp_path / "native", raw, activation=activation, k=k,
                       base_model_name=MODEL)
    model = ReplacementModel.from_pretrained(MODEL, str(src), device=CPU, dtype=torch.float32)
    graph = attribute(ids, model, batch_size=128)
    _, xs = hf_run(hf, ids)
    pre = torch.stack([(xs[l] / raw.nf_in[l]) @ raw.W[l] + raw.b[l] for l in range(n)]).relu()
    if activation == "topk":
        keep = pre >= pre.topk(k, dim=-1).values[..., -1:]
    else:  # BluelightAI's reference: per layer, top k over all (position, feature) pairs
        kth = pre.flatten(-2, -1).topk(k, dim=-1).values[:, -1]
        keep = pre >= kth[:, None, None]
    keep &= pre > 0
    keep[:, 0] = False
    expected = {tuple(t) for t in keep.nonzero().tolist()}
    assert {tuple(t) for t in graph.active_features.tolist()} == expected
    # The per-layer APIs select the same features as attribute().
    _, acts = model.get_activations(ids[None])
    assert {tuple(t) for t in acts.nonzero().tolist()} == expected
