"""The Qwen3.5 plugin in whatever profile runs the tests. Main profile (transformers 4.57, pinned
by circuit-tracer): it registers its models and hook maps, stands down with the profile's name in
``doctor``, and ``load_model`` refuses with the same message; importing never fails. Profile
qwen35 (transformers >= 5.2): doctor says which backend loads each model."""

from __future__ import annotations

import pytest

import qwen_interp

QWEN35_REPOS = ["Qwen/Qwen3.5-2B-Base", "Qwen/Qwen3.5-9B-Base", "Qwen/Qwen3.5-27B",
                "Qwen/Qwen3.5-35B-A3B-Base"]


def test_models_and_hook_maps_registered(qwen_registry):
    from qwen_interp_qwen35 import QWEN35, QWEN35_MOE
    for repo in QWEN35_REPOS:
        spec = qwen_registry.model(repo)
        assert qwen_registry.owners["models"][repo] == "qwen35"
        point = qwen_registry.hook_names(spec.architecture).point("resid_post")
        assert (point.tl, point.hf_module) == ("blocks.{layer}.hook_resid_post",
                                               "model.layers.{layer}")
    assert {qwen_registry.model(r).architecture for r in QWEN35_REPOS} == {QWEN35, QWEN35_MOE}


def test_release_models_match_their_sae_releases(qwen_registry):
    """Every Qwen-Scope Qwen3.5 release names a registered model of its d_model and depth."""
    rels = [r for r in qwen_registry.sae_releases.values() if "Qwen3.5" in r.model_repo_id]
    assert len(rels) == 8
    for rel in rels:
        spec = qwen_registry.model(rel.model_repo_id)
        assert (spec.d_model, spec.n_layers) == (rel.d_model, rel.n_layers), rel.release


def test_status_and_load_model():
    import qwen_interp_qwen35 as q
    adapter = qwen_interp.registry().adapters["qwen35"]
    status = {s.part: s for s in adapter.status()}
    if q.qwen35_supported():
        assert status["transformers"].state == "upstream", status  # runs Qwen3.5 as published
        assert all(status[r].detail.startswith("load_model -> ") for r in QWEN35_REPOS), status
        return
    runtime = status["transformers"]
    assert runtime.state == "inactive"  # stood down
    assert runtime.detail.startswith("transformers 4.")
    assert "Qwen3.5 needs transformers >= 5.2" in runtime.detail
    assert "profile qwen35" in runtime.detail
    with pytest.raises(RuntimeError, match=r"transformers >= 5\.2.*profile qwen35"):
        q.load_model("Qwen/Qwen3.5-2B-Base")


def test_doctor_reports_the_plugin(cli):
    proc = cli("doctor")
    lines = [line for line in proc.stdout.splitlines() if "[qwen35]" in line]
    assert lines, proc.stdout + proc.stderr
    import qwen_interp_qwen35 as q
    if not q.qwen35_supported():
        assert "transformers: inactive (" in lines[0] and "profile qwen35" in lines[0], lines
    assert "qwen35" in proc.stdout.split("plugins:")[1].splitlines()[0]


def test_sae_configs_point_at_the_registered_hook_map(qwen_registry):
    """SAELens's config of every Qwen3.5 release (what SAE.from_pretrained uses) names the
    registered model, its width, and this plugin's resid_post in TL/bridge and HF terms."""
    import sae_lens  # noqa: F401 - arms the SAELens adapter
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_CONFIG_GETTERS
    getter = NAMED_PRETRAINED_SAE_CONFIG_GETTERS["qwen_scope"]
    for rel in qwen_registry.sae_releases.values():
        if "Qwen3.5" not in rel.model_repo_id:
            continue
        spec = qwen_registry.model(rel.model_repo_id)
        point = qwen_registry.hook_names(spec.architecture).point(rel.hook_point)
        for n in (0, spec.n_layers - 1):
            cfg = getter(rel.repo_id, f"layer{n}.sae.pt", "cpu")
            assert (cfg["model_name"], cfg["d_in"], cfg["d_sae"]) == (spec.repo_id, spec.d_model,
                                                                     rel.d_sae), rel.release
            assert cfg["hook_name"] == point.tl.format(layer=n) == point.bridge.format(layer=n)
            assert cfg["hf_hook_name"] == point.hf_module.format(layer=n)
