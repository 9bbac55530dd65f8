"""SAELens feature activations on the TL model equal an independent reference: HF transformers'
decoder-layer outputs and the Qwen-Scope formula (top k of relu(x @ W_enc.T + b_enc)), computed
from the raw ``layer{n}.sae.pt``. Small offline models; the real-width test is in
test_sae_realsize.py."""

from __future__ import annotations

import pytest
import torch

import qwen_interp
from helpers import SEED_PROMPT

# The Qwen3 models behind Qwen-Scope releases (the Qwen3.5 ones run in the qwen35 profile).
RELEASE_MODELS = ["Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-8B-Base", "Qwen/Qwen3-30B-A3B-Base"]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path_factory.getbasetemp() / "qwen-cache"))


@pytest.fixture(scope="module")
def tiny(qwen_offline_hub, qwen_registry):
    """Tiny Qwen-Scope-format releases for the small stand-ins of every Qwen3 model behind a
    Qwen-Scope release, registered by a plugin."""
    from qwen_interp.apps.testing.sae_hub import SAEReleasePlugin, qwen_scope_snapshot, tiny_release
    rels = {}
    for repo in RELEASE_MODELS:
        spec = qwen_registry.model(repo)
        qwen_offline_hub.model(spec)
        rels[repo] = tiny_release(spec)
        qwen_scope_snapshot(qwen_offline_hub, rels[repo], range(3))
    plugin = SAEReleasePlugin(rels.values())
    qwen_interp.register_plugin(plugin)
    yield rels
    qwen_interp.unregister_plugin(plugin)


def hf_layer_outputs(repo_id: str, ids: torch.Tensor) -> list[torch.Tensor]:
    """Output of every decoder layer from HF ``hidden_states``; the last one through a forward
    hook (``hidden_states[-1]`` is after the final norm)."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(repo_id, torch_dtype=torch.float32)
    last = {}
    handle = hf.model.layers[-1].register_forward_hook(
        lambda m, a, o: last.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    handle.remove()
    return [*out.hidden_states[1:-1], last["x"]]


def qwen_scope_reference(x: torch.Tensor, raw: dict, k: int) -> torch.Tensor:
    """docs/formats.md (Qwen-Scope): pre = x @ W_enc.T + b_enc; keep the top k of relu(pre)."""
    acts = torch.relu(x @ raw["W_enc"].T + raw["b_enc"])
    top = acts.topk(k, dim=-1)
    return torch.zeros_like(acts).scatter(-1, top.indices, top.values)


def raw_layer(repo_id: str, layer: int) -> dict:
    from huggingface_hub import hf_hub_download
    return torch.load(hf_hub_download(repo_id, f"layer{layer}.sae.pt"), weights_only=True)


def prompt_ids(repo_id: str) -> torch.Tensor:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(repo_id)(SEED_PROMPT, return_tensors="pt").input_ids


@pytest.mark.parametrize("model_repo", RELEASE_MODELS)
def test_saelens_activations_equal_hf_reference(tiny, model_repo):
    from sae_lens import SAE, HookedSAETransformer
    rel = tiny[model_repo]
    ids = prompt_ids(model_repo)
    hf_out = hf_layer_outputs(model_repo, ids)
    model = HookedSAETransformer.from_pretrained(model_repo, device="cpu", dtype=torch.float32)
    assert model.cfg.n_layers == len(hf_out) == rel.n_layers
    for layer in range(rel.n_layers):
        sae = SAE.from_pretrained(rel.release, f"layer{layer}")
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_resid_post"
        with torch.no_grad():
            _, cache = model.run_with_cache_with_saes(ids, saes=[sae])
        ours = cache[f"blocks.{layer}.hook_resid_post.hook_sae_acts_post"][0]
        ref = qwen_scope_reference(hf_out[layer][0], raw_layer(rel.repo_id, layer), rel.k)
        assert ours.shape == ref.shape == (ids.shape[1], rel.d_sae)
        # Same active features at every position, same values.
        assert torch.equal(ours > 0, ref > 0), layer
        assert (ref > 0).sum(-1).eq(rel.k).all()  # not vacuous: k features active everywhere
        assert (ours - ref).abs().max().item() <= 1e-4, layer
        assert not model.acts_to_saes  # run_with_cache_with_saes removed the SAE again


def test_sae_attached_to_model_changes_downstream_only_through_reconstruction(tiny):
    """Sanity of the spliced SAE: with the error term, logits are unchanged; without, they move."""
    from sae_lens import SAE, HookedSAETransformer
    rel = tiny["Qwen/Qwen3-1.7B-Base"]
    ids = prompt_ids(rel.model_repo_id)
    model = HookedSAETransformer.from_pretrained(rel.model_repo_id, device="cpu")
    sae = SAE.from_pretrained(rel.release, "layer1")
    with torch.no_grad():
        clean = model(ids)
        exact = model.run_with_saes(ids, saes=[sae], use_error_term=True)
        recon = model.run_with_saes(ids, saes=[sae])
    assert (exact - clean).abs().max().item() <= 1e-4
    assert (recon - clean).abs().max().item() > 1e-2


def test_release_models_covered(qwen_registry):
    """Every release whose model runs in this profile's HookedTransformer is exercised above
    (the Qwen3.5 ones run in the qwen35 profile: tests/qwen35)."""
    from qwen_interp_transformerlens import hooked_transformer_architectures
    hooked = hooked_transformer_architectures(qwen_interp.registry())
    models = qwen_registry.models
    registered = {rel.model_repo_id for name, rel in qwen_interp.registry().sae_releases.items()
                  if name.startswith("qwen-scope-") and rel.model_repo_id in models
                  and models[rel.model_repo_id].architecture in hooked}
    assert registered == set(RELEASE_MODELS)
