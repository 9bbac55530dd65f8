"""What the upstream projects' own test suites check, with the adapters active: TransformerLens's
name tables stay sorted (its tests/unit/test_supported_models.py) and are restored exactly, and a
Qwen-Scope download goes through ``sae_lens.loading.pretrained_sae_loaders.hf_hub_download``,
which SAELens's tests (tests/loading/test_pretrained_sae_loaders.py) mock.
The circuit-tracer contract of ``compute_attribution_components`` is in
tests/test_attribution_memory.py. `.ci/upstream-tests` runs TransformerLens's own suite."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_python

import qwen_interp

MODEL = "Qwen/Qwen3-1.7B-Base"


@pytest.mark.subprocess
def test_transformerlens_names_inserted_in_upstreams_order_and_restored():
    out = run_python("""
import json
import transformer_lens.supported_models as sm
import transformer_lens.loading_from_pretrained as lp
snap = lambda: [list(sm.OFFICIAL_MODEL_NAMES), list(sm.MODEL_ALIASES.items()),
                list(sm.DEFAULT_MODEL_ALIASES)]
pristine = snap()
import qwen_interp
names, aliases, defaults = snap()
qwen_interp.deactivate()
print(json.dumps(dict(pristine=pristine, names=names, keys=[k for k, _ in aliases],
                      aliases=dict(aliases), defaults=defaults, restored=snap(),
                      same=[lp.OFFICIAL_MODEL_NAMES is sm.OFFICIAL_MODEL_NAMES,
                            lp.MODEL_ALIASES is sm.MODEL_ALIASES])))
""")
    s = json.loads(out.stdout.strip().splitlines()[-1])
    names, keys = s["names"], s["keys"]
    added = {"Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-4B-Base", "Qwen/Qwen3-8B-Base",
             "Qwen/Qwen3-14B-Base", "Qwen/Qwen3-30B-A3B-Base"}
    assert added <= set(names) and added <= set(keys)
    # upstream's own assertions (tests/unit/test_supported_models.py)
    assert names == sorted(names, key=str.casefold)
    assert keys == sorted(keys, key=str.casefold)
    # DEFAULT_MODEL_ALIASES[i] is the first alias of OFFICIAL_MODEL_NAMES[i], as upstream builds it
    assert s["defaults"] == [s["aliases"][n][0] if n in s["aliases"] else n for n in names]
    assert s["restored"] == s["pristine"]  # contents and order
    assert s["same"] == [True, True]


@pytest.fixture
def tiny_release(qwen_registry, tmp_path, monkeypatch):
    from qwen_interp.apps.testing.sae_hub import SAEReleasePlugin, qwen_scope_tensors, tiny_release
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))
    release = tiny_release(qwen_registry.model(MODEL))
    path = tmp_path / "layer1.sae.pt"
    torch.save(qwen_scope_tensors(release.d_model, release.d_sae, 0), path)
    plugin = SAEReleasePlugin([release])
    qwen_interp.register_plugin(plugin)
    yield release, path
    qwen_interp.unregister_plugin(plugin)


def test_qwen_scope_download_goes_through_saelens_mockable_function(tiny_release, monkeypatch):
    """SAELens's tests replace ``pretrained_sae_loaders.hf_hub_download`` with a function that
    returns a local file; ``SAE.from_pretrained`` for a Qwen-Scope release must use it."""
    from sae_lens import SAE
    release, path = tiny_release
    calls = []

    def mock_hf_hub_download(*args, **kwargs):
        calls.append(kwargs.get("filename", args[1] if len(args) > 1 else None))
        return str(path)

    monkeypatch.setattr("sae_lens.loading.pretrained_sae_loaders.hf_hub_download",
                        mock_hf_hub_download)
    sae = SAE.from_pretrained(release.release, "layer1")
    assert calls == ["layer1.sae.pt"]
    raw = torch.load(path, weights_only=True)
    assert torch.equal(sae.W_enc.detach(), raw["W_enc"].T)
