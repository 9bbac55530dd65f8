"""One model family = one plugin file. tests/plugins/qwen2_family.py adds Qwen2 (a checkpoint and
a ``ModelFamily`` record) with no edit anywhere else: once registered, the offline hub builds its
stand-in from the record's recipe, TransformerLens's HookedTransformer loads it by repo id, and
every hook name of the family's map is a hook of that model holding the HF module's tensor.
The built-in families are records too, and an architecture no plugin registered is refused by
the offline hub with one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

import qwen_interp
from qwen_interp.apps.testing.hook_check import check_family_hook_names
from qwen_interp.apps.testing.plugin_file import load_plugin_file, registered
from qwen_interp.specs import (CAPABILITIES, HOOKED_TRANSFORMER, TL_FAST_FORWARD, TL_FAST_LOAD,
                               TL_MOE, ModelSpec)

PLUGIN_FILE = Path(__file__).parent / "plugins" / "qwen2_family.py"


@pytest.fixture
def qwen2_plugin():
    with registered(load_plugin_file(PLUGIN_FILE)) as plugin:
        yield plugin


def test_hook_register_model_families_a_new_family_in_one_plugin_file(qwen2_plugin,
                                                                       qwen_offline_hub):
    reg = qwen_interp.registry()
    family = reg.model_families["Qwen2ForCausalLM"]
    assert family == qwen2_plugin.QWEN2_FAMILY
    assert reg.hook_names("Qwen2ForCausalLM") == family.hook_names  # the family's map is the map
    assert reg.model("qwen2-tiny").architecture == "Qwen2ForCausalLM"
    # The stand-in keeps the recipe's facts: the real GQA ratio, vocabulary and tying.
    from qwen_interp.apps.testing.hub import small_config
    cfg = small_config(reg.model("test-org/Qwen2-Tiny"))
    assert type(cfg).__name__ == family.hf_config_class
    assert (cfg.num_attention_heads // cfg.num_key_value_heads, cfg.vocab_size,
            cfg.tie_word_embeddings) == (7, 151936, True)
    checked = check_family_hook_names(qwen_offline_hub, "test-org/Qwen2-Tiny")
    assert checked == set(family.hook_names.points)


def test_unregistering_the_plugin_removes_the_family(qwen2_plugin):
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES
    assert "Qwen2ForCausalLM" in qwen_interp.registry().model_families
    assert "test-org/Qwen2-Tiny" in OFFICIAL_MODEL_NAMES  # HookedTransformer knows the model
    qwen_interp.unregister_plugin(qwen2_plugin)
    try:
        reg = qwen_interp.registry()
        assert "Qwen2ForCausalLM" not in reg.model_families
        assert "Qwen2ForCausalLM" not in reg.hook_name_maps
        assert "test-org/Qwen2-Tiny" not in OFFICIAL_MODEL_NAMES
        with pytest.raises(KeyError):
            reg.model("test-org/Qwen2-Tiny")
    finally:
        qwen_interp.register_plugin(qwen2_plugin)  # the fixture unregisters it again


def test_builtin_families_are_records_with_their_capabilities(qwen_registry):
    families = qwen_interp.registry().model_families
    expected = {"Qwen3ForCausalLM": {HOOKED_TRANSFORMER, TL_FAST_LOAD, TL_FAST_FORWARD},
                "Qwen3MoeForCausalLM": {HOOKED_TRANSFORMER, TL_MOE, TL_FAST_FORWARD},
                "Qwen3_5ForCausalLM": set(), "Qwen3_5MoeForCausalLM": set()}
    assert {a: set(families[a].capabilities) for a in expected} == expected
    for arch, family in families.items():
        assert set(family.capabilities) <= set(CAPABILITIES), arch
        assert family.stand_in is not None, arch
        assert qwen_interp.registry().hook_names(arch) == family.hook_names
    # Every registered model belongs to a registered family.
    assert {s.architecture for s in qwen_registry.models.values()} <= set(families)


def test_offline_hub_refuses_an_unregistered_architecture(tmp_path):
    from qwen_interp.apps.testing.hub import OfflineHub
    spec = ModelSpec("test-org/Llama-Tiny", "LlamaForCausalLM", d_model=64, n_layers=2,
                     n_heads=4, n_kv_heads=2, d_head=16, d_mlp=128, tied_embeddings=False)
    with pytest.raises(ValueError) as info:
        OfflineHub(tmp_path).model(spec)
    message = str(info.value)
    assert "'LlamaForCausalLM'" in message and "test-org/Llama-Tiny" in message
    assert "Qwen3ForCausalLM" in message and "Qwen3MoeForCausalLM" in message
    assert not (tmp_path / "hub").exists()  # refused before anything was written
