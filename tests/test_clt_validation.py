"""Bad checkpoints fail before any allocation with one TranscoderValidationError that names the
file and the tensor, and leave the conversion cache and the registry untouched."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

from qwen_interp.apps.testing.clt_native import random_clt, write_hub, write_native

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
    expect_error(src, cache_dir, "clt.safetensors", "activation.log_threshold", "non-finite")


def test_native_non_float_tensor(tmp_path, cache_dir):
    """BluelightAI's reader casts every tensor to the config's dtype, so a float dtype other than
    the config's loads; a tensor that is not floating point cannot be a weight."""
    raw = random_clt(N, D, F)
    src = write_native(tmp_path / "src", raw, base_model_name=model_dir(tmp_path))
    from safetensors.torch import load_file, save_file
    tensors = load_file(src / "clt.safetensors")
    tensors["encoder.W"] = tensors["encoder.W"].to(torch.int32)
    save_file(tensors, src / "clt.safetensors")
    expect_error(src, cache_dir, "clt.safetensors", "encoder.W", "dtype I32 is not a float type")


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


def test_hub_negative_threshold(tmp_path, cache_dir):
    """circuit-tracer would fire features at negative values; BluelightAI's reference clamps the
    threshold to 1e-12. The readers disagree, so the file is refused."""
    from safetensors.torch import load_file, save_file
    folder = hub(tmp_path)
    path = folder / "W_enc_1.safetensors"
    tensors = load_file(str(path))
    tensors["threshold_1"][5] = -0.25
    save_file(tensors, str(path))
    err = expect_error(folder, cache_dir, "W_enc_1.safetensors", "threshold_1",
                       "1 negative JumpReLU thresholds (first at feature 5: -0.25)")
    assert "must be >= 0" in str(err)


# --- crafted safetensors headers: 8-byte little-endian header length + JSON + data ------------
def write_crafted(path, tensors, edit=None, header_length=None, data_extra=b""):
    """Write ``tensors`` the way the safetensors format lays them out (contiguous data in
    header order), after ``edit(header)`` has broken the header."""
    import struct
    header, data, offset = {}, b"", 0
    for name, t in tensors.items():
        raw = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    if edit is not None:
        header = edit(header) or header
    text = json.dumps(header).encode()
    n = len(text) if header_length is None else header_length
    path.write_bytes(struct.pack("<Q", n) + text + data + data_extra)


def crafted_case(tmp_path, cache_dir, tensor, message, **kwargs):
    from safetensors.torch import load_file
    folder = hub(tmp_path)
    path = folder / "W_enc_1.safetensors"
    tensors = {k: v.float() for k, v in load_file(str(path)).items()}
    write_crafted(path, tensors, **kwargs)
    return expect_error(folder, cache_dir, "W_enc_1.safetensors", tensor, message)


def test_crafted_header_is_a_list(tmp_path, cache_dir):
    crafted_case(tmp_path, cache_dir, None, "the header is a JSON list, expected an object",
                 edit=lambda h: [h])


def test_crafted_header_missing_data_offsets(tmp_path, cache_dir):
    crafted_case(tmp_path, cache_dir, "b_enc_1", "bad header entry: no 'data_offsets'",
                 edit=lambda h: h["b_enc_1"].pop("data_offsets") and None)


def test_crafted_header_length_beyond_file(tmp_path, cache_dir):
    crafted_case(tmp_path, cache_dir, None, "header length field says 99999999 bytes",
                 header_length=99_999_999)


def test_crafted_file_shorter_than_length_field(tmp_path, cache_dir):
    folder = hub(tmp_path)
    (folder / "W_enc_1.safetensors").write_bytes(b"\x10\x00\x00")
    err = expect_error(folder, cache_dir, "W_enc_1.safetensors", None,
                       "shorter than the 8-byte header length")
    assert "3 bytes" in str(err)


def test_crafted_reversed_offsets(tmp_path, cache_dir):
    def edit(h):
        h["b_dec_1"]["data_offsets"].reverse()
    crafted_case(tmp_path, cache_dir, "b_dec_1", "are reversed", edit=edit)


def test_crafted_negative_offsets(tmp_path, cache_dir):
    def edit(h):
        h["b_enc_1"]["data_offsets"] = [-8, h["b_enc_1"]["data_offsets"][1]]
    crafted_case(tmp_path, cache_dir, "b_enc_1", "is not two non-negative integers", edit=edit)


def test_crafted_overlapping_offsets(tmp_path, cache_dir):
    def edit(h):  # b_enc_1 re-uses the last bytes of the tensor before it
        start, stop = h["b_enc_1"]["data_offsets"]
        h["b_enc_1"]["data_offsets"] = [start - 4, stop - 4]
    crafted_case(tmp_path, cache_dir, "b_enc_1", "overlaps the previous tensor", edit=edit)


def test_crafted_offsets_beyond_file(tmp_path, cache_dir):
    def edit(h):  # the last tensor claims 4 more floats, past the end of the file
        last = max(h, key=lambda k: h[k]["data_offsets"][1])
        start, stop = h[last]["data_offsets"]
        h[last]["shape"] = [(stop - start) // 4 + 4]
        h[last]["data_offsets"] = [start, stop + 16]
        names.append(last)
    names = []
    err = crafted_case(tmp_path, cache_dir, ANY, "file is truncated", edit=edit)
    assert err.tensor == names[0]


def test_crafted_offsets_do_not_match_shape(tmp_path, cache_dir):
    def edit(h):
        h["b_dec_1"]["shape"] = [3]
    crafted_case(tmp_path, cache_dir, "b_dec_1", "but F32 [3] needs 12", edit=edit)


def test_header_reader_agrees_with_safetensors(tmp_path):
    """Every crafted file above is also refused by the safetensors library itself, and a
    well-formed one passes both."""
    import torch
    from safetensors import SafetensorError, safe_open
    from qwen_interp_circuit_tracer.safetensors_header import read_header
    tensors = {"a": torch.ones(2, 3), "b": torch.zeros(4)}
    good = tmp_path / "good.safetensors"
    write_crafted(good, tensors)
    assert read_header(good)["a"].shape == (2, 3)
    with safe_open(str(good), framework="pt") as f:
        assert sorted(f.keys()) == ["a", "b"]
    gap = tmp_path / "gap.safetensors"
    write_crafted(gap, tensors, edit=lambda h: h["b"].update(data_offsets=[28, 44]),
                  data_extra=b"\0" * 4)
    for path in (gap,):
        from qwen_interp_circuit_tracer import TranscoderValidationError
        with pytest.raises(TranscoderValidationError, match="leaves a gap"):
            read_header(path)
        with pytest.raises(SafetensorError):
            safe_open(str(path), framework="pt")
