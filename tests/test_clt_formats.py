"""Every CLT format loads into circuit-tracer and computes the published formulas.

Each native layout is written from the same random weights (``RawCLT``); the references below
evaluate the formulas of BluelightAI's reference loader (inference-clt,
``src/inference_clt/inference_clt.py``; compared against that loader itself in
``test_clt_native_reference.py``) and of circuit-tracer's hub layout with plain torch ops on those
raw tensors (or, for the hub layout, on the tensors read back from the files), never through the
code under test.
"""

from __future__ import annotations

import json

import pytest
import torch

from qwen_interp.apps.testing.clt_native import random_clt, write_hub, write_native

N, D, F, POS = 3, 16, 24, 6
ACTIVATIONS = ["relu", "jumprelu", "topk", "topk_all"]
K = 5


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))


def load(path, lazy_decoder=True, dtype=torch.float32):
    import qwen_interp  # noqa: F401  (arms the adapter)
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    clt, config = load_transcoder_from_hub(str(path), device=torch.device("cpu"), dtype=dtype,
                                           lazy_decoder=lazy_decoder)
    return clt, config


def tiny_model_dir(tmp_path, d_model, n_layers):
    """A folder with just the config.json facts validation reads."""
    folder = tmp_path / f"model-{d_model}-{n_layers}"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"hidden_size": d_model,
                                                    "num_hidden_layers": n_layers}))
    return str(folder)


def topk_rows(v, k):
    vals, idx = v.topk(k, dim=-1)
    return torch.zeros_like(v).scatter(-1, idx, vals)


def native_reference(raw, xs, activation, k, cover, n_model):
    """BluelightAI's semantics (``xs``: one prompt's positions), mapped onto model layers
    ``cover``."""
    n = raw.n_layers
    pre = torch.stack([(xs[cover[i]] / raw.nf_in[i]) @ raw.W[i] + raw.b[i] for i in range(n)])
    if activation == "relu":
        f = torch.relu(pre)
    elif activation == "jumprelu":
        f = pre * (pre > raw.log_threshold.exp()[:, None, :])
    elif activation == "topk":
        f = topk_rows(torch.relu(pre), k)
    else:  # topk_all: per layer, over all positions x features (relu(pre).flatten(-2, -1))
        f = topk_rows(torch.relu(pre).flatten(-2, -1), k).reshape(pre.shape)
    feats = torch.zeros(n_model, xs.shape[1], raw.d_latent)
    out = torch.zeros(n_model, xs.shape[1], raw.d_model)
    for j in range(n):
        feats[cover[j]] = f[j]
        acc = sum(f[i] @ raw.W_dec[i, j] for i in range(j + 1)) + raw.b_dec[j]
        out[cover[j]] = acc * raw.nf_out[j]
    return feats, out


def check_clt(clt, raw, activation, cover, n_model, atol=1e-5):
    g = torch.Generator().manual_seed(7)
    xs = torch.randn(n_model, POS, raw.d_model, generator=g) * 2
    ref_f, ref_out = native_reference(raw, xs, activation, K, cover, n_model)
    assert (ref_f != 0).float().mean() > 0.02  # not vacuous
    with torch.no_grad():
        f = clt.encode(xs)
        torch.testing.assert_close(f, ref_f, atol=atol, rtol=1e-5)
        out = clt.decode(f.to_sparse())
        torch.testing.assert_close(out, ref_out, atol=atol, rtol=1e-5)
        # The attribution path: sparse features and the encoder row each active feature reads.
        sparse, enc = clt.encode_sparse(xs, zero_positions=slice(0, 0))
        torch.testing.assert_close(sparse.to_dense(), ref_f, atol=atol, rtol=1e-5)
        layer, pos, feat = sparse.indices()
        by_model = {m: i for i, m in enumerate(cover)}
        ref_enc = torch.stack([raw.W[by_model[int(m)]][:, int(q)] / raw.nf_in[by_model[int(m)]]
                               for m, q in zip(layer, feat)])
        torch.testing.assert_close(enc, ref_enc, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("decoder_layout", ["input_layer", "output_layer"])
@pytest.mark.parametrize("config_version", [1, 2])
@pytest.mark.parametrize("layout", ["single_file", "layer_weights"])
def test_native_formats_match_formulas(tmp_path, layout, config_version, decoder_layout,
                                       activation):
    raw = random_clt(N, D, F, seed=1)
    src = write_native(tmp_path / "src", raw, layout=layout, config_version=config_version,
                       decoder_layout=decoder_layout, activation=activation,
                       k=K if activation.startswith("topk") else None,
                       base_model_name=tiny_model_dir(tmp_path, D, N))
    for lazy in (False, True):
        clt, config = load(src, lazy_decoder=lazy)
        assert (clt.feature_input_hook, clt.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
        assert config["format"] == "bluelight_native"
        check_clt(clt, raw, activation, list(range(N)), N)
    assert clt.W_dec is None  # lazy decoder: nothing materialised


@pytest.mark.parametrize("layout,config_version", [("single_file", 2), ("layer_weights", 1)])
def test_layer_indices_subset(tmp_path, layout, config_version):
    raw = random_clt(N, D, F, seed=2)
    cover = [0, 2, 4]
    src = write_native(tmp_path / "src", raw, layout=layout, config_version=config_version,
                       decoder_layout="output_layer", activation="jumprelu",
                       layer_indices=cover, base_model_name=tiny_model_dir(tmp_path, D, 5))
    clt, _ = load(src, lazy_decoder=False)
    assert clt.n_layers == 5
    check_clt(clt, raw, "jumprelu", cover, 5)


def test_bf16_norm_factors_fold_exactly(tmp_path):
    """Power-of-two norm factors: the folded bf16 weights equal the formula on the bf16 raw
    tensors (other factors are rounded once from a float32 product)."""
    raw = random_clt(N, D, F, seed=3)
    raw.nf_in = torch.tensor([0.5, 2.0, 4.0])
    raw.nf_out = torch.tensor([0.25, 1.0, 8.0])
    for name in ("W", "b", "log_threshold", "b_dec"):
        setattr(raw, name, getattr(raw, name).to(torch.bfloat16).float())
    raw.W_dec = {key: v.to(torch.bfloat16).float() for key, v in raw.W_dec.items()}
    src = write_native(tmp_path / "src", raw, activation="relu", dtype="bfloat16",
                       base_model_name=tiny_model_dir(tmp_path, D, N))
    clt, _ = load(src, dtype=torch.float32)
    check_clt(clt, raw, "relu", list(range(N)), N)


def hub_reference(folder, xs, n):
    """circuit-tracer's hub-layout semantics, from the tensors in the files."""
    from safetensors.torch import load_file
    enc = [load_file(str(folder / f"W_enc_{i}.safetensors")) for i in range(n)]
    dec = [load_file(str(folder / f"W_dec_{i}.safetensors"))[f"W_dec_{i}"] for i in range(n)]
    pre = [xs[i] @ enc[i][f"W_enc_{i}"].T + enc[i][f"b_enc_{i}"] for i in range(n)]
    f = [p * (p > enc[i][f"threshold_{i}"]) for i, p in enumerate(pre)]
    out = torch.stack([sum(f[i] @ dec[i][:, m - i, :] for i in range(m + 1)) + enc[m][f"b_dec_{m}"]
                       for m in range(n)])
    return torch.stack(f), out


def test_hub_layout_with_config_yaml(tmp_path):
    raw = random_clt(N, D, F, seed=4, norm_factors=False)
    folder = write_hub(tmp_path / "hub", raw, config={
        "model_kind": "cross_layer_transcoder", "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out", "model_name": tiny_model_dir(tmp_path, D, N)})
    clt, config = load(folder)
    assert config["format"] == "circuit_tracer_hub"
    xs = torch.randn(N, POS, D) * 2
    ref_f, ref_out = hub_reference(folder, xs, N)
    with torch.no_grad():
        f = clt.encode(xs)
        torch.testing.assert_close(f, ref_f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(clt.decode(f.to_sparse()), ref_out, atol=1e-5, rtol=1e-5)
    # Same weights through the native path give the same transcoder.
    native_clt, _ = load(write_native(tmp_path / "native", raw, activation="jumprelu"))
    with torch.no_grad():
        torch.testing.assert_close(native_clt.encode(xs), f)


def test_hub_layout_without_config_needs_a_release(tmp_path):
    from qwen_interp_circuit_tracer import TranscoderValidationError
    folder = write_hub(tmp_path / "hub", random_clt(N, D, F, seed=5, norm_factors=False))
    with pytest.raises(TranscoderValidationError, match="config.yaml"):
        load(folder)


def test_unknown_reference_goes_to_upstream():
    """Stand down: a reference that is neither registered nor a folder reaches upstream as is
    (offline, upstream fails on its own config.yaml download)."""
    import qwen_interp  # noqa: F401
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    assert hasattr(load_transcoder_from_hub, "__qwen_interp_original__")
    with pytest.raises(FileNotFoundError, match="config.yaml from someone/unknown-clt"):
        load_transcoder_from_hub("someone/unknown-clt", device=torch.device("cpu"))
