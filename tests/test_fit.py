"""Pairing and fit checks are registry logic in the core (``qwen_interp.fit``): a registered CLT
with another registered model, the model a CLT is loaded for, an SAE against a model. The
plugins raise their own error types from them, unchanged for users."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

CLT_06, CLT_17 = "bluelightai/clt-qwen3-0.6b-base-20k", "bluelightai/clt-qwen3-1.7b-base-20k"


@pytest.fixture()
def registry():
    import qwen_interp
    return qwen_interp.registry()


def test_pairing_mismatch_between_registered_names(registry):
    from qwen_interp.fit import PairingMismatch, pairing_mismatch
    assert pairing_mismatch(registry, "Qwen/Qwen3-1.7B-Base", CLT_17) is None
    assert pairing_mismatch(registry, "Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-1.7b@main") is None
    mismatch = pairing_mismatch(registry, "Qwen/Qwen3-1.7B-Base", "bluelight-qwen3-0.6b@v1")
    assert mismatch == PairingMismatch(CLT_06, "Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-1.7B-Base")
    # Either name unregistered: nothing to compare.
    assert pairing_mismatch(registry, "someone/other-model", CLT_06) is None
    assert pairing_mismatch(registry, "Qwen/Qwen3-1.7B-Base", "/some/folder") is None


def test_check_pairing_raises_a_checkpoint_error(registry):
    from qwen_interp.errors import CheckpointError
    from qwen_interp.fit import PairingError, check_pairing
    check_pairing(registry, "Qwen/Qwen3-0.6B-Base", CLT_06)
    with pytest.raises(PairingError) as info:
        check_pairing(registry, "Qwen/Qwen3-1.7B-Base", CLT_06)
    assert isinstance(info.value, CheckpointError)
    assert str(info.value) == (f"{CLT_06}: this CLT was trained on Qwen/Qwen3-0.6B-Base, not on "
                               "Qwen/Qwen3-1.7B-Base; nothing was loaded")


def test_the_plugin_keeps_its_own_error_type():
    from qwen_interp_circuit_tracer import TranscoderValidationError, preflight
    with pytest.raises(TranscoderValidationError, match="trained on Qwen/Qwen3-0.6B-Base, not on "
                                                        "Qwen/Qwen3-1.7B-Base") as info:
        preflight("Qwen/Qwen3-1.7B-Base", CLT_06)
    assert info.value.path == CLT_06 and info.value.tensor is None


def test_paired_with_nests_and_resets():
    from qwen_interp.fit import Pairing, current_pairing, paired_with
    assert current_pairing() is None
    with paired_with("a/model") as outer:
        assert outer == current_pairing() == Pairing("a/model", "transformerlens")
        with paired_with("b/model", "nnsight"):
            assert current_pairing() == Pairing("b/model", "nnsight")
        assert current_pairing() is outer
    with pytest.raises(RuntimeError), paired_with("c/model", None):
        raise RuntimeError
    assert current_pairing() is None


def _sae(d_in, hook_name, model_name):
    return SimpleNamespace(cfg=SimpleNamespace(
        d_in=d_in, metadata=SimpleNamespace(hook_name=hook_name, model_name=model_name)))


def _tl_model(d_model, n_layers, name):
    return SimpleNamespace(cfg=SimpleNamespace(d_model=d_model, n_layers=n_layers,
                                               model_name=name))


def test_sae_fit(registry):
    import qwen_interp_saelens
    from qwen_interp.errors import CheckpointError
    from qwen_interp.fit import SAEModelMismatchError, check_sae_fits_model
    # The plugin re-exports the core's function and error: one type for users to catch.
    assert qwen_interp_saelens.check_sae_fits_model is check_sae_fits_model
    assert qwen_interp_saelens.SAEModelMismatchError is SAEModelMismatchError
    assert issubclass(SAEModelMismatchError, CheckpointError)
    model = _tl_model(64, 4, "Qwen3-1.7B-Base")
    check_sae_fits_model(_sae(64, "blocks.3.hook_resid_post", "Qwen/Qwen3-1.7B-Base"), model)
    check_sae_fits_model(_sae(64, "blocks.3.hook_resid_post", None), model)  # model unknown
    with pytest.raises(SAEModelMismatchError, match="with d_model 64"):
        check_sae_fits_model(_sae(32, "blocks.0.hook_resid_post", "x"), model)
    with pytest.raises(SAEModelMismatchError, match="has only 4 layers"):
        check_sae_fits_model(_sae(64, "blocks.4.hook_resid_post", "x"), model)
    with pytest.raises(SAEModelMismatchError, match="is used with Qwen/Qwen3-1.7B-Base"):
        check_sae_fits_model(_sae(64, "blocks.0.hook_resid_post", "Qwen/Qwen3-0.6B-Base"), model)
    hf = SimpleNamespace(config=SimpleNamespace(hidden_size=64, num_hidden_layers=2,
                                                _name_or_path="/local/ckpt"))
    with pytest.raises(SAEModelMismatchError, match="has only 2 layers"):
        check_sae_fits_model(_sae(64, "blocks.2.hook_resid_post", "x"), hf, registry)
