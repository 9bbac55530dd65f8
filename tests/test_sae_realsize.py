"""At the release's real d_model (2048) and width (32768): SAE.from_pretrained of the real
release + HookedSAETransformer.from_pretrained("Qwen/Qwen3-1.7B-Base") + run_with_cache_with_saes
equal the HF reference with the Qwen-Scope formula.

The model is Qwen3-1.7B-Base at full width (hidden 2048, 16/8 heads, MLP 6144, vocabulary 151936)
with 2 layers, so it needs its own HF_HOME (the session's holds the small stand-in under that
repo id): the check runs in a fresh interpreter. Layer 1 is the last layer (hook, not
``hidden_states[-1]``).
"""

from __future__ import annotations

import json
import os

import pytest

from helpers import SEED_PROMPT, run_python

REAL = "qwen-scope-3-1.7b-base-w32k-l50"

CHILD = r"""
import json, os
import torch
import qwen_interp
from huggingface_hub import hf_hub_download
from sae_lens import SAE, HookedSAETransformer
from transformers import AutoModelForCausalLM, AutoTokenizer

repo, release, sae_repo, prompt = json.loads(os.environ["QWEN_TEST_ARGS"])
ids = AutoTokenizer.from_pretrained(repo)(prompt, return_tensors="pt").input_ids
hf = AutoModelForCausalLM.from_pretrained(repo, torch_dtype=torch.float32)
assert hf.config.hidden_size == 2048 and hf.config.num_hidden_layers == 2
last = {}
hf.model.layers[-1].register_forward_hook(
    lambda m, a, o: last.setdefault("x", o[0] if isinstance(o, tuple) else o))
with torch.no_grad():
    out = hf(ids, output_hidden_states=True)
hf_out = [out.hidden_states[1][0], last["x"][0]]
del hf, out

model = HookedSAETransformer.from_pretrained(repo, device="cpu", dtype=torch.float32)
result = {}
for layer in (0, 1):
    sae = SAE.from_pretrained(release, f"layer{layer}")
    with torch.no_grad():
        _, cache = model.run_with_cache_with_saes(
            ids, saes=[sae], names_filter=lambda n: "hook_sae_acts_post" in n)
    ours = cache[f"blocks.{layer}.hook_resid_post.hook_sae_acts_post"][0]
    raw = torch.load(hf_hub_download(sae_repo, f"layer{layer}.sae.pt"), weights_only=True)
    pre = hf_out[layer] @ raw["W_enc"].T + raw["b_enc"]
    acts = torch.relu(pre)
    top = acts.topk(sae.cfg.k, dim=-1)
    ref = torch.zeros_like(acts).scatter(-1, top.indices, top.values)
    kth = top.values[:, -1:]
    differ = (ours > 0) != (ref > 0)
    # A feature may only swap in or out of the top k if it is tied with the k-th value.
    near_tie = (pre - kth).abs() <= 1e-3 * kth.abs().clamp_min(1)
    common = (ours > 0) & (ref > 0)
    result[layer] = {
        "shape": list(ours.shape), "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae, "k": sae.cfg.k,
        "active_per_pos": (ref > 0).sum(-1).tolist(),
        "n_differ": int(differ.sum()), "differ_not_tied": int((differ & ~near_tie).sum()),
        "max_diff_common": float((ours - ref)[common].abs().max()),
        "max_ref": float(ref.max()),
    }
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_real_width_activations_equal_hf_reference(tmp_path, tmp_path_factory, qwen_offline_hub,
                                                  qwen_registry):
    from qwen_interp.apps.testing.hub import OfflineHub
    from qwen_interp.apps.testing.sae_hub import qwen_scope_snapshot, real_width_model

    rel = qwen_registry.sae_releases[REAL]
    spec = qwen_registry.model(rel.model_repo_id)
    # Real-size SAE layers live in the session hub (shared with other tests); the child's own
    # HF_HOME links to them and holds the full-width 2-layer model.
    sae_snapshot = qwen_scope_snapshot(qwen_offline_hub, rel, [0, 1])
    home = OfflineHub(tmp_path / "hf")
    home.hub_dir.mkdir(parents=True)
    os.symlink(qwen_offline_hub.repo_dir(rel.repo_id), home.repo_dir(rel.repo_id))
    real_width_model(home, spec, n_layers=2)
    assert (sae_snapshot / "layer0.sae.pt").stat().st_size > 500e6

    args = [spec.repo_id, REAL, rel.repo_id, SEED_PROMPT]
    proc = run_python(CHILD, env={"QWEN_TEST_ARGS": json.dumps(args), "HF_HOME": str(home.hf_home),
                           # The session's cache: the layer files resolve to the same blobs.
                           "QWEN_INTERP_CACHE": str(tmp_path_factory.getbasetemp() / "qwen-cache")})
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    for layer in ("0", "1"):
        r = result[layer]
        assert (r["d_in"], r["d_sae"], r["k"]) == (2048, 32768, 50)
        assert r["shape"][1] == 32768
        assert set(r["active_per_pos"]) == {50}, r  # the reference really keeps k features
        assert r["differ_not_tied"] == 0, r
        assert r["n_differ"] <= 2, r  # at most a boundary tie flips
        assert r["max_diff_common"] <= 1e-3 * max(1.0, r["max_ref"]), r
