"""docs/cookbook.md: each recipe's code block, copied into one new file, registered as a plugin,
does what the recipe says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import qwen_interp
from qwen_interp.apps.testing.plugin_file import load_plugin_file, registered

COOKBOOK = Path(__file__).resolve().parents[1] / "docs" / "cookbook.md"
RECIPE = re.compile(r"<!-- cookbook: ([\w-]+) -->\n```python\n(.*?)```", re.DOTALL)


def recipes() -> dict[str, str]:
    return dict(RECIPE.findall(COOKBOOK.read_text()))


def recipe_plugin(tmp_path: Path, name: str, module: str):
    """The recipe's code block, written to ``module``.py in ``tmp_path`` and loaded."""
    path = tmp_path / f"{module}.py"
    path.write_text(recipes()[name])
    return load_plugin_file(path)


def test_the_cookbook_has_its_three_recipes():
    assert set(recipes()) == {"model-family", "clt-format", "sae-release"}


def test_recipe_model_family(tmp_path, qwen_offline_hub):
    from qwen_interp.apps.testing.hook_check import check_family_hook_names
    from qwen_interp.apps.testing.hub import small_config
    with registered(recipe_plugin(tmp_path, "model-family", "qwen_interp_qwen2")) as plugin:
        reg = qwen_interp.registry()
        spec = reg.model("qwen2.5-0.5b")
        family = reg.model_families["Qwen2ForCausalLM"]
        assert (spec.repo_id, family) == ("Qwen/Qwen2.5-0.5B", plugin.QWEN2_FAMILY)
        assert reg.hook_names("Qwen2ForCausalLM") == family.hook_names
        assert type(small_config(spec)).__name__ == family.hf_config_class
        checked = check_family_hook_names(qwen_offline_hub, "Qwen/Qwen2.5-0.5B")
    assert checked == {"embed", "resid_pre", "attn_out", "mlp_out", "resid_post"}
    assert "Qwen2ForCausalLM" not in qwen_interp.registry().model_families


def write_single_file_clt(folder: Path, n_layers: int = 3, n_features: int = 4,
                          d_model: int = 8) -> dict:
    """A transcoder in the recipe's format; returns the tensors written."""
    import json

    import torch
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    tensors = {"W_enc": torch.randn(n_layers, n_features, d_model, generator=g),
               "b_enc": torch.randn(n_layers, n_features, generator=g),
               "threshold": torch.rand(n_layers, n_features, generator=g),
               "b_dec": torch.randn(n_layers, d_model, generator=g),
               **{f"W_dec_{layer}": torch.randn(n_features, n_layers - layer, d_model, generator=g)
                  for layer in range(n_layers)}}
    folder.mkdir()
    save_file(tensors, str(folder / "clt.safetensors"))
    (folder / "clt.json").write_text(json.dumps({"feature_input_hook": "mlp.hook_in",
                                                 "feature_output_hook": "mlp.hook_out"}))
    return tensors


def test_recipe_clt_format(tmp_path):
    import torch
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    from qwen_interp_circuit_tracer import TranscoderValidationError
    folder = tmp_path / "my-clt"
    tensors = write_single_file_clt(folder)
    cpu = torch.device("cpu")
    with pytest.raises(TranscoderValidationError, match="no registered transcoder format"):
        load_transcoder_from_hub(str(folder), device=cpu)
    with registered(recipe_plugin(tmp_path, "clt-format", "qwen_interp_single_file_clt")):
        clt, config = load_transcoder_from_hub(str(folder), device=cpu, dtype=torch.float32)
    assert config["format"] == "single_file_clt"
    assert (clt.feature_input_hook, clt.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
    assert torch.equal(clt.W_enc, tensors["W_enc"]) and torch.equal(clt.b_dec, tensors["b_dec"])
    assert torch.equal(clt.W_dec[2], tensors["W_dec_2"])
    # Layer 1's features: JumpReLU(x @ W_enc[1].T + b_enc[1]) with the file's thresholds.
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    pre = x @ tensors["W_enc"][1].T + tensors["b_enc"][1]
    expected = pre * (pre > tensors["threshold"][1])
    assert torch.allclose(clt.encode_layer(x, 1), expected, atol=1e-6)
    assert 0 < (expected != 0).sum() < expected.numel()  # some fire, some do not
    assert "single_file_clt" not in qwen_interp.registry().transcoder_formats


def test_recipe_sae_release(tmp_path):
    from qwen_interp_saelens import list_sae_releases
    name = "our-lab-qwen3-1.7b-base-w16k-l32"
    assert name not in qwen_interp.registry().sae_releases
    with registered(recipe_plugin(tmp_path, "sae-release", "qwen_interp_our_saes")) as plugin:
        assert qwen_interp.registry().sae_releases[name] == plugin.OUR_SAES
        [listing] = list_sae_releases(name)
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
        entry = get_pretrained_saes_directory()[name]
    assert (listing.repo_id, listing.model_repo_id) == (
        "our-lab/SAE-Res-Qwen3-1.7B-Base-W16K-L0_32", "Qwen/Qwen3-1.7B-Base")
    assert (listing.d_model, listing.d_sae, listing.k, len(listing.layers)) == (2048, 16384, 32, 28)
    assert all(loc.hub_file is None for loc in listing.layers)  # listed, nothing downloaded
    assert entry.repo_id == listing.repo_id and entry.saes_map["layer3"] == "layer3.sae.pt"
    assert name not in qwen_interp.registry().sae_releases
