"""Qwen3.5 (profile qwen35): small dense and MoE stand-ins in the published layout
(``Qwen3_5(Moe)ForConditionalGeneration`` checkpoints), loaded by repo id from the offline cache
through ``qwen_interp_qwen35.load_model`` on both backends (TransformerBridge, HF).

- every hook point of the plugin's maps equals HF transformers at its module and port;
- SAE features at layer n (SAELens ``SAE.from_pretrained`` of a Qwen-Scope-format release)
  equal the docs/formats.md reference computed from HF ``hidden_states``: top k of
  relu(x @ W_enc.T + b_enc), from the raw ``layer{n}.sae.pt``;
- steering (``qwen_interp_saelens.steer``) moves the next-token distribution in the feature's
  direction: a decoder column promotes T = argmax(lm_head(norm(W_dec[:, f]))), so steering f up
  raises log p(T) monotonically; hooks are gone afterwards.

Layers 0-2 of the stand-ins are GatedDeltaNet, layer 3 full attention (one in four)."""

from __future__ import annotations

import pytest
import torch

import qwen_interp

PROMPT = "Fact: The president of the United States in 2010 was"
DENSE, MOE = "Qwen/Qwen3.5-2B-Base", "Qwen/Qwen3.5-35B-A3B-Base"
MODELS = [DENSE, MOE]
BACKENDS = ["bridge", "hf"]
N_LAYERS = 4  # qwen_interp.apps.testing.qwen35.SMALL_N_LAYERS


@pytest.fixture(scope="module")
def _private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QWEN_INTERP_CACHE", str(tmp_path_factory.getbasetemp() / "qwen-cache"))
        yield


def make_test_release(spec, d_model: int, d_sae: int = 256, k: int = 8):
    """A Qwen-Scope-format test release for the small stand-in of ``spec`` (tied: W_enc = W_dec.T,
    unit decoder columns)."""
    from qwen_interp.specs import SAERelease
    short = spec.repo_id.split("/")[-1]
    return SAERelease(release=f"qwen-interp-test-{short.lower()}-w{d_sae}-l{k}",
                      repo_id=f"qwen-interp-test/SAE-Res-{short}-W{d_sae}-L0_{k}",
                      model_repo_id=spec.repo_id, d_model=d_model, d_sae=d_sae, k=k,
                      n_layers=N_LAYERS)




@pytest.fixture(scope="module")
def setup(_private_cache, qwen_offline_hub, qwen_registry):
    """Stand-ins, their test SAE releases (registered by a plugin), tokens."""
    from transformers import AutoTokenizer
    from qwen_interp.apps.testing.qwen35 import qwen35_model, small_config_qwen35
    from qwen_interp.apps.testing.sae_hub import SAEReleasePlugin, qwen_scope_snapshot
    rels = {}
    for repo in MODELS:
        spec = qwen_registry.model(repo)
        qwen35_model(qwen_offline_hub, spec)
        d_model = small_config_qwen35(spec).text_config.hidden_size
        rels[repo] = make_test_release(spec, d_model)
        qwen_scope_snapshot(qwen_offline_hub, rels[repo], range(N_LAYERS), tied=True)
    plugin = SAEReleasePlugin(rels.values())
    qwen_interp.register_plugin(plugin)
    ids = AutoTokenizer.from_pretrained(DENSE)(PROMPT, return_tensors="pt").input_ids
    yield rels, ids
    qwen_interp.unregister_plugin(plugin)


_models: dict = {}
_baseline_hooks: dict = {}


def model_for(repo: str, backend: str):
    """One loaded model per (repo, backend) for the module (loading is the slow part)."""
    import qwen_interp_qwen35
    key = (repo, backend)
    if key not in _models:
        _models[key] = qwen_interp_qwen35.load_model(repo, backend=backend)
        _baseline_hooks[id(_models[key])] = foreign_hooks(_models[key])
    return _models[key]


def hf_reference(repo: str, ids) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Decoder-layer outputs from HF ``hidden_states`` (the last through a forward hook:
    ``hidden_states[-1]`` is after the final norm) and the last-position log-probs."""
    hf = model_for(repo, "hf")
    last = {}
    handle = hf.model.layers[-1].register_forward_hook(lambda m, a, o: last.setdefault("x", o))
    try:
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True)
    finally:
        handle.remove()
    return [*out.hidden_states[1:-1], last["x"]], out.logits[0, -1].log_softmax(-1)


def qwen_scope_reference(x: torch.Tensor, raw: dict, k: int) -> torch.Tensor:
    """docs/formats.md (Qwen-Scope): pre = x @ W_enc.T + b_enc; keep the top k of relu(pre),
    zero the rest."""
    acts = torch.relu(x @ raw["W_enc"].T + raw["b_enc"])
    top = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter(-1, top.indices, top.values)


def foreign_hooks(model) -> list:
    """Forward (pre-)hooks not installed by transformers itself (transformers 5 adds
    output-capturing hooks of its own on the first ``output_hidden_states`` call)."""
    modules = model.hook_dict.values() if hasattr(model, "hook_dict") else model.modules()
    return [fn for m in modules for fn in (*m._forward_hooks.values(),
                                           *m._forward_pre_hooks.values())
            if not getattr(fn, "__module__", "").startswith("transformers.")]


def no_hooks(model) -> bool:
    return foreign_hooks(model) == _baseline_hooks[id(model)]


# --- the models ---------------------------------------------------------------------------------
@pytest.mark.parametrize("repo", MODELS)
def test_load_model_classes(setup, repo):
    from transformer_lens.model_bridge import TransformerBridge
    hf = model_for(repo, "hf")
    assert type(hf).__name__ == qwen_interp.registry().model(repo).architecture
    kinds = [("linear_attn" if hasattr(layer, "linear_attn") else "self_attn")
             for layer in hf.model.layers]
    assert kinds == ["linear_attn"] * 3 + ["self_attn"]
    bridge = model_for(repo, "bridge")
    assert isinstance(bridge, TransformerBridge) and bridge.cfg.model_name == repo


@pytest.mark.parametrize("repo", MODELS)
def test_bridge_hook_points_equal_hf(setup, repo):
    """Each point of the plugin's hook map: the bridge name exists and carries HF's tensor."""
    _, ids = setup
    reg = qwen_interp.registry()
    hooks = reg.hook_names(reg.model(repo).architecture)
    hf, bridge = model_for(repo, "hf"), model_for(repo, "bridge")
    want, handles = {}, []
    for key, point in hooks.points.items():
        for n in range(N_LAYERS):
            def grab(mod, args, out, key=key, n=n, port=point.hf_port):
                value = args[0] if port == "input" else out
                want[key, n] = (value[0] if isinstance(value, tuple) else value).detach()
            handles.append(hf.get_submodule(point.hf_module.format(layer=n))
                           .register_forward_hook(grab))
    try:
        with torch.no_grad():
            hf(ids)
    finally:
        for h in handles:
            h.remove()
    names = {point.bridge.format(layer=n): (key, n)
             for key, point in hooks.points.items() for n in range(N_LAYERS)}
    missing = sorted(set(names) - set(bridge.hook_dict))
    assert not missing, missing
    _, cache = bridge.run_with_cache(ids, names_filter=list(names))
    worst = {}
    for name, (key, n) in names.items():
        got = cache[name]
        got = got[0] if isinstance(got, tuple) else got
        ref = want[key, n]
        worst[name] = (got.reshape(ref.shape) - ref).abs().max().item()
    assert max(worst.values()) <= 1e-4, worst


@pytest.mark.parametrize("repo", MODELS)
def test_bridge_logprobs_equal_hf(setup, repo):
    _, ids = setup
    _, ref = hf_reference(repo, ids)
    with torch.no_grad():
        got = model_for(repo, "bridge")(ids)[0, -1].log_softmax(-1)
    assert (got - ref).abs().max().item() <= 1e-4


# --- SAE features -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("repo", MODELS)
def test_sae_features_equal_reference(setup, repo, backend):
    """SAE.from_pretrained(release, "layer{n}") + sae_features on the loaded model = the
    docs/formats.md formula on HF's decoder-layer outputs, with the raw weights of
    layer{n}.sae.pt."""
    from huggingface_hub import hf_hub_download
    from sae_lens import SAE
    import qwen_interp_qwen35
    rels, ids = setup
    rel = rels[repo]
    xs, _ = hf_reference(repo, ids)
    model = model_for(repo, backend)
    for n in range(N_LAYERS):
        sae = SAE.from_pretrained(rel.release, f"layer{n}")
        raw = torch.load(hf_hub_download(rel.repo_id, f"layer{n}.sae.pt"), weights_only=True)
        ref = qwen_scope_reference(xs[n], raw, rel.k)
        got = qwen_interp_qwen35.sae_features(model, sae, ids)
        assert got.shape == ref.shape == (1, ids.shape[1], rel.d_sae)
        assert torch.equal(got != 0, ref != 0), f"layer {n}: active features differ"
        assert (got - ref).abs().max().item() <= 1e-4, n
        assert ((got != 0).sum(-1) == rel.k).all()
    assert no_hooks(model)


# --- steering -----------------------------------------------------------------------------------
def promoted_token(repo: str, sae, f: int) -> int:
    """Logit lens of the decoder column: the final norm (scale-invariant) then the unembedding."""
    hf = model_for(repo, "hf")
    with torch.no_grad():
        return int(hf.lm_head(hf.model.norm(sae.W_dec[f][None]))[0].argmax())


def last_logprobs(model, ids) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    return logits[0, -1].log_softmax(-1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("repo", MODELS)
def test_steering_moves_next_token_in_feature_direction(setup, repo, backend):
    from sae_lens import SAE
    import qwen_interp_saelens as q
    rels, ids = setup
    model = model_for(repo, backend)
    for layer in (1, 3):  # a GatedDeltaNet layer and the full-attention layer
        sae = SAE.from_pretrained(rels[repo].release, f"layer{layer}")
        for f in (0, 1):
            T = promoted_token(repo, sae, f)
            lps = []
            for strength in (-8.0, 0.0, 8.0, 32.0):
                with q.steer(model, sae, {f: strength}):
                    lps.append(last_logprobs(model, ids)[T].item())
            assert lps == sorted(lps) and lps[-1] - lps[1] > 3, (layer, f, lps)
            assert no_hooks(model)
    clean = last_logprobs(model, ids)
    assert (clean - hf_reference(repo, ids)[1]).abs().max().item() <= 1e-4  # nothing left over


@pytest.mark.parametrize("repo", MODELS)
def test_steering_same_on_both_backends(setup, repo):
    """steer / suppress give the same next-token distribution on the bridge and on HF."""
    from sae_lens import SAE
    import qwen_interp_saelens as q
    rels, ids = setup
    sae = SAE.from_pretrained(rels[repo].release, "layer2")
    active = int(qwen_interp_saelens_active(repo, sae, ids))
    out = {}
    for backend in BACKENDS:
        model = model_for(repo, backend)
        with q.steer(model, sae, {3: 6.0, 5: -2.0}):
            steered = last_logprobs(model, ids)
        with q.suppress(model, sae, [active]):
            suppressed = last_logprobs(model, ids)
        out[backend] = (steered, suppressed)
    for a, b in zip(out["bridge"], out["hf"]):
        assert (a - b).abs().max().item() <= 1e-4
    clean = hf_reference(repo, ids)[1]
    assert (out["hf"][0] - clean).abs().max().item() > 1e-2  # steering did change something


def qwen_interp_saelens_active(repo, sae, ids) -> int:
    """A feature active at the last position of layer 2 (from the HF reference)."""
    import qwen_interp_qwen35
    acts = qwen_interp_qwen35.sae_features(model_for(repo, "hf"), sae, ids)[0, -1]
    return int(acts.argmax())


def test_steering_during_hf_generate(setup):
    from sae_lens import SAE
    import qwen_interp_saelens as q
    rels, ids = setup
    model = model_for(DENSE, "hf")
    sae = SAE.from_pretrained(rels[DENSE].release, "layer3")
    T = promoted_token(DENSE, sae, 1)
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=151643)
    clean = model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
    with q.steer(model, sae, {1: 64.0}):
        steered = model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
    assert steered == [T] * 4 and steered != clean
    assert no_hooks(model)
    assert model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist() == clean


def test_sae_for_another_model_refused(setup):
    """An SAE of the dense 2B stand-in is refused on the MoE model (same width: 128 each)."""
    from sae_lens import SAE
    import qwen_interp_saelens as q
    rels, _ = setup
    sae = SAE.from_pretrained(rels[DENSE].release, "layer1")
    model = model_for(MOE, "hf")
    with pytest.raises(q.SAEModelMismatchError):
        with q.steer(model, sae, {0: 1.0}):
            pass
    assert no_hooks(model)
