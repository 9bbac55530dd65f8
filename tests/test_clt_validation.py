"""Bad checkpoints fail before any allocation with one TranscoderValidationError that names the
file and the tensor, and leave the conversion cache and the registry untouched."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from qwen_interp.testing.clt_native import random_clt, write_hub, write_native

N, D, F = 3, 16, 24
ANY = object()


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(d))
    return d


def model_dir(tmp_path, d_model=D, n_layers=N):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": d_model,
                                                    "num_hidden_layers": n_layers}))
    return str(folder)


def hub_config(model):
    return {"model_kind": "cross_layer_transcoder", "feature_input_hook": "mlp.hook_in",
            "feature_output_hook": "mlp.hook_out", "model_name": model}


def snapshot_state(cache_dir):
    import qwen_interp
    reg = qwen_interp.registry()
    files = sorted(str(p.relative_to(cache_dir)) for p in cache_dir.rglob("*")) \
        if cache_dir.exists() else None
    return files, {name: copy.copy(getattr(reg, name)) for name in
                   ("models", "transcoder_releases", "transcoder_formats", "hook_name_maps")}


def expect_error(path, cache_dir, file_name, tensor, message):
    import qwen_interp  # noqa: F401
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    from qwen_interp_circuit_tracer import TranscoderValidationError
    before = snapshot_state(cache_dir)
    with pytest.raises(TranscoderValidationError) as info:
        load_transcoder_from_hub(str(path), device=torch.device("cpu"), dtype=torch.float32)
    err = info.value
    assert os.path.basename(err.path) == file_name, err
    if tensor is ANY:  # names whichever tensor the missing bytes belong to
        assert err.tensor, err
    else:
        assert err.tensor == tensor, err
    assert message in str(err) and file_name in str(err)
    if err.tensor:
        assert err.tensor in str(err)
    assert snapshot_state(cache_dir) == before
    return err


def truncate(path, n_bytes=100):
    data = path.read_bytes()
    path.write_bytes(data[:-n_bytes])


# --- native layouts -------------------------------------------------------------------------
def test_native_truncated_file(tmp_path, cache_dir):
    src = write_native(tmp_path / "src", random_clt(N, D, F), base_model_name=model_dir(tmp_path))
    truncate(src / "clt.safetensors")
    expect_error(src, cache_dir, "clt.safetensors", ANY, "truncated")


def test_native_wrong_d_model_for_model(tmp_path, cache_dir):
    src = write_native(tmp_path / "src", random_clt(N, D, F),
                       base_model_name=model_dir(tmp_path, d_model=2 * D))
    expect_error(src, cache_dir, "model_config.json", "d_in", f"has d_model {2 * D}")


def test_native_missing_layer_file(tmp_path, cache_dir):
    src = write_native(tmp_path / "src", random_clt(N, D, F), layout="layer_weights",
                       base_model_name=model_dir(tmp_path))
    (src / "layer_1.safetensors").unlink()
    expect_error(src, cache_dir, "layer_1.safetensors", None, "missing")


def test_native_non_finite_threshold(tmp_path, cache_dir):
    raw = random_clt(N, D, F)
    raw.log_threshold[1, 3] = float("inf")
    src = write_native(tmp_path / "src", raw, base_model_name=model_dir(tmp_path))
    expect_error(src, cache_dir, "clt.safetensors", "encoder.log_threshold", "non-finite")


def test_native_wrong_dtype(tmp_path, cache_dir):
    src = write_native(tmp_path / "src", random_clt(N, D, F), base_model_name=model_dir(tmp_path))
    cfg = json.loads((src / "model_config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (src / "model_config.json").write_text(json.dumps(cfg))
    expect_error(src, cache_dir, "clt.safetensors", "encoder.W", "dtype float32")


# --- hub layout ---------------------------------------------------------------------------
def hub(tmp_path, **model):
    raw = random_clt(N, D, F, norm_factors=False)
    return write_hub(tmp_path / "hub", raw, config=hub_config(model_dir(tmp_path, **model)))


def test_hub_truncated_file(tmp_path, cache_dir):
    folder = hub(tmp_path)
    truncate(folder / "W_dec_1.safetensors")
    expect_error(folder, cache_dir, "W_dec_1.safetensors", "W_dec_1", "truncated")


def test_hub_wrong_d_model_for_model(tmp_path, cache_dir):
    folder = hub(tmp_path, d_model=2 * D)
    expect_error(folder, cache_dir, "W_enc_0.safetensors", "W_enc_0", f"has d_model {2 * D}")


def test_hub_missing_layer(tmp_path, cache_dir):
    folder = hub(tmp_path)
    (folder / "W_enc_2.safetensors").unlink()
    expect_error(folder, cache_dir, "W_enc_2.safetensors", "W_enc_2", "layer 2 is missing")


def test_hub_fewer_layers_than_model(tmp_path, cache_dir):
    folder = hub(tmp_path, n_layers=N + 1)
    expect_error(folder, cache_dir, f"W_enc_{N}.safetensors", f"W_enc_{N}", "missing")


def test_hub_non_finite_threshold(tmp_path, cache_dir):
    from safetensors.torch import load_file, save_file
    folder = hub(tmp_path)
    path = folder / "W_enc_1.safetensors"
    tensors = load_file(str(path))
    tensors["threshold_1"][5] = float("nan")
    save_file(tensors, str(path))
    expect_error(folder, cache_dir, "W_enc_1.safetensors", "threshold_1", "non-finite")


def test_error_before_any_allocation(tmp_path, cache_dir, monkeypatch):
    """Validation runs before circuit-tracer's loader: a bad file never reaches load_clt."""
    import qwen_interp  # noqa: F401
    import circuit_tracer.transcoder.cross_layer_transcoder as ctl
    calls = []
    real = ctl._load_state_dict
    monkeypatch.setattr(ctl, "_load_state_dict", lambda *a, **k: calls.append(a) or real(*a, **k))
    folder = hub(tmp_path)
    truncate(folder / "W_dec_2.safetensors")
    expect_error(folder, cache_dir, "W_dec_2.safetensors", "W_dec_2", "truncated")
    assert calls == []


def test_registered_clt_for_the_wrong_model_fails_before_loading(monkeypatch):
    """`from_pretrained(<0.6B model>, <1.7B CLT>)`: one clear error, and neither the model nor
    the transcoder is touched (no file is opened, nothing is downloaded)."""
    import qwen_interp  # noqa: F401
    from circuit_tracer import ReplacementModel
    from circuit_tracer.replacement_model import replacement_model
    from qwen_interp_circuit_tracer import TranscoderValidationError

    def must_not_load(*args, **kwargs):
        raise AssertionError("loading started")

    monkeypatch.setattr(replacement_model, "load_transcoder_from_hub", must_not_load)
    with pytest.raises(TranscoderValidationError, match="trained on Qwen/Qwen3-1.7B-Base, not on "
                                                        "Qwen/Qwen3-0.6B-Base"):
        ReplacementModel.from_pretrained("Qwen/Qwen3-0.6B-Base", "bluelight-qwen3-1.7b")
