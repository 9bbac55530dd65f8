"""Qwen-Scope releases: registered as docs/formats.md lists them, equal to SAELens's own entries
and config, and the SAELens adapter stands down where SAELens has them / provides them where it
does not."""

from __future__ import annotations

import pytest
import torch

import qwen_interp

REAL = "qwen-scope-3-1.7b-base-w32k-l50"

# docs/formats.md, Qwen-Scope table: model, d_model, layers, (width K, k) pairs.
FACTS = {
    "Qwen3-1.7B-Base": (2048, 28, {(32, 50), (32, 100)}),
    "Qwen3-8B-Base": (4096, 36, {(64, 50), (64, 100)}),
    "Qwen3-30B-A3B-Base": (2048, 48, {(32, 50), (128, 100)}),
    "Qwen3.5-2B-Base": (2048, 24, {(32, 50), (32, 100)}),
    "Qwen3.5-9B-Base": (4096, 32, {(64, 50), (64, 100)}),
    "Qwen3.5-27B": (5120, 64, {(80, 50), (80, 100)}),
    "Qwen3.5-35B-A3B-Base": (2048, 40, {(32, 50), (128, 100)}),
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path_factory.getbasetemp() / "qwen-cache"))


def qwen_scope_releases():
    return {name: rel for name, rel in qwen_interp.registry().sae_releases.items()
            if name.startswith("qwen-scope-")}


def test_all_14_releases_registered_as_facts_say():
    rels = qwen_scope_releases()
    assert len(rels) == 14
    seen = {}
    for rel in rels.values():
        model = rel.model_repo_id.removeprefix("Qwen/")
        d_model, n_layers, _ = FACTS[model]
        assert (rel.d_model, rel.n_layers) == (d_model, n_layers), rel
        assert rel.repo_id == f"Qwen/SAE-Res-{model}-W{rel.d_sae // 1024}K-L0_{rel.k}"
        assert rel.hook_point == "resid_post" and rel.file_template == "layer{layer}.sae.pt"
        seen.setdefault(model, set()).add((rel.d_sae // 1024, rel.k))
    assert seen == {m: sizes for m, (_, _, sizes) in FACTS.items()}


def test_releases_equal_saelens_directory():
    """The installed SAELens ships all 14: names, repos, models, layer ids and files agree."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    directory = get_pretrained_saes_directory()
    for name, rel in qwen_scope_releases().items():
        entry = directory[name]
        assert entry.conversion_func == "qwen_scope"
        assert (entry.repo_id, entry.model) == (rel.repo_id, rel.model_repo_id)
        assert entry.saes_map == {f"layer{n}": f"layer{n}.sae.pt" for n in range(rel.n_layers)}


def test_our_config_equals_saelens_config_getter():
    """Our config (used only where SAELens lacks the release) equals SAELens's own getter."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    import qwen_interp_saelens as q
    reg = qwen_interp.registry()
    for rel in qwen_scope_releases().values():
        for layer in (0, rel.n_layers - 1):
            overrides = {"dtype": "float32", "device": "cpu"}
            ours = q.sae_config(reg, rel, layer, "cpu", dict(overrides))
            theirs = loaders.get_qwen_scope_config_from_hf(rel.repo_id, f"layer{layer}.sae.pt",
                                                           "cpu", False, dict(overrides))
            assert ours == theirs, rel.release
    with pytest.raises(ValueError, match="layers 0..27"):
        q.sae_config(reg, qwen_scope_releases()[REAL], 28)


def _upstream_state():
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    return (dict(get_pretrained_saes_directory()), dict(loaders.NAMED_PRETRAINED_SAE_LOADERS),
            dict(loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS))


def _same(a, b):
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def test_adapter_stands_down_on_current_saelens_and_restores_exactly():
    from sae_lens.loading import pretrained_sae_loaders as loaders
    adapter = qwen_interp.registry().adapters["saelens"]
    assert adapter.active
    adapter.deactivate()
    pristine = _upstream_state()
    assert pristine[1]["qwen_scope"] is loaders.qwen_scope_sae_huggingface_loader
    adapter.activate(qwen_interp.registry())
    try:
        directory, loader_table, getters = _upstream_state()
        # Releases and config: SAELens's own objects, untouched.
        assert _same(directory, pristine[0])
        assert _same(getters, pristine[2])
        # One loader under the name: ours (safe, cached), reading with SAELens's config.
        assert loader_table.keys() == pristine[1].keys()
        assert isinstance(loader_table["qwen_scope"],
                          __import__("qwen_interp_saelens").QwenScopeLoader)
        assert adapter.loader.upstream_config is loaders.get_qwen_scope_config_from_hf
        releases = {s.part: s for s in adapter.status()}["releases"]
        assert (releases.state, releases.detail) == ("upstream", "14 already in SAELens")
    finally:
        adapter.deactivate()
        after = _upstream_state()
        adapter.activate(qwen_interp.registry())
    assert all(_same(a, b) for a, b in zip(after, pristine))


def test_adapter_provides_releases_where_saelens_lacks_them(qwen_offline_hub):
    """Simulate SAELens < ~6.43 (no Qwen-Scope) on the real objects: remove its 14 entries, its
    qwen_scope loader and config getter; the adapter then adds exactly those, SAE.from_pretrained
    works for a real-size layer and gives the same SAE as SAELens's own path; deactivate removes
    them again."""
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from qwen_interp.apps.testing.sae_hub import qwen_scope_snapshot

    rel = qwen_scope_releases()[REAL]
    qwen_scope_snapshot(qwen_offline_hub, rel, [0, 1])
    adapter = qwen_interp.registry().adapters["saelens"]

    # SAELens's own path (its config; our safe, cached reader).
    reference, ref_cfg, _ = SAE.from_pretrained_with_cfg_and_sparsity(REAL, "layer0")

    adapter.deactivate()
    pristine = _upstream_state()
    directory = get_pretrained_saes_directory()
    removed = {name: directory.pop(name) for name in qwen_scope_releases()}
    old_loader = loaders.NAMED_PRETRAINED_SAE_LOADERS.pop("qwen_scope")
    old_getter = loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS.pop("qwen_scope")
    try:
        adapter.activate(qwen_interp.registry())
        assert set(qwen_scope_releases()) <= set(directory)
        assert directory[REAL].saes_map["layer27"] == "layer27.sae.pt"
        assert "qwen_scope" in loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS
        releases = {s.part: s for s in adapter.status()}["releases"]
        assert releases.state == "bridged"
        assert releases.detail.startswith("0 already in SAELens, 14 added: "), releases
        sae, cfg, _ = SAE.from_pretrained_with_cfg_and_sparsity(REAL, "layer0")
        assert cfg == ref_cfg
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (2048, 32768, 50)
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.equal(getattr(sae, name), getattr(reference, name)), name
        adapter.deactivate()
        assert not set(qwen_scope_releases()) & set(directory)
        assert "qwen_scope" not in loaders.NAMED_PRETRAINED_SAE_LOADERS
        assert "qwen_scope" not in loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS
    finally:
        adapter.deactivate()
        directory.update(removed)
        loaders.NAMED_PRETRAINED_SAE_LOADERS["qwen_scope"] = old_loader
        loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS["qwen_scope"] = old_getter
        restored = _upstream_state()
        adapter.activate(qwen_interp.registry())
    assert restored[0].keys() == pristine[0].keys()
    assert all(restored[0][k] is pristine[0][k] for k in pristine[0])
    assert _same(restored[1], pristine[1]) and _same(restored[2], pristine[2])


def test_reference_loader_matches_saelens_plain_loader(qwen_offline_hub):
    """Our reader gives the same tensors as SAELens's own torch.load loader (real size)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from qwen_interp.apps.testing.sae_hub import qwen_scope_snapshot
    rel = qwen_scope_releases()[REAL]
    qwen_scope_snapshot(qwen_offline_hub, rel, [0, 1])
    cfg_a, ours, _ = loaders.NAMED_PRETRAINED_SAE_LOADERS["qwen_scope"](
        rel.repo_id, "layer1.sae.pt", "cpu", False, {"dtype": "float32"})
    cfg_b, plain, _ = loaders.qwen_scope_sae_huggingface_loader(
        rel.repo_id, "layer1.sae.pt", "cpu", False, {"dtype": "float32"})
    assert cfg_a == cfg_b
    assert ours.keys() == plain.keys()
    for k in plain:
        assert torch.equal(ours[k], plain[k]), k


def test_hook_register_sae_releases_third_party_release(qwen_offline_hub, qwen_registry):
    """A plugin's ``register_sae_releases`` record becomes a SAELens release (added by the
    adapter, since SAELens lacks it), loads by name, and disappears with the plugin."""
    from sae_lens import SAE
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    from qwen_interp.apps.testing.sae_hub import SAEReleasePlugin, qwen_scope_snapshot, tiny_release
    rel = tiny_release(qwen_registry.model("Qwen/Qwen3-1.7B-Base"), d_sae=128, k=4)
    qwen_scope_snapshot(qwen_offline_hub, rel, [2])
    plugin = SAEReleasePlugin([rel])
    qwen_interp.register_plugin(plugin)
    try:
        assert qwen_interp.registry().sae_releases[rel.release] == rel
        entry = get_pretrained_saes_directory()[rel.release]
        assert (entry.repo_id, entry.model, entry.conversion_func) == (
            rel.repo_id, rel.model_repo_id, "qwen_scope")
        sae = SAE.from_pretrained(rel.release, "layer2")
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (rel.d_model, 128, 4)
        assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    finally:
        qwen_interp.unregister_plugin(plugin)
    assert rel.release not in qwen_interp.registry().sae_releases
    assert rel.release not in get_pretrained_saes_directory()
