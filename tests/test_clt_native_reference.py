"""BluelightAI's native CLT checkpoints: qwen-interp's loader against BluelightAI's own.

The expected values come from an independent implementation: BluelightAI's reference loader
(inference-clt, MIT), vendored verbatim as ``tests/reference/inference_clt.py``. The fixtures are
written the way that loader reads checkpoints (``qwen_interp.apps.testing.clt_native``: its key
names, shapes, dtypes, manifest and config defaults). For every layout it reads, features and
reconstructions here (circuit-tracer's ``encode``/``encode_sparse``/``encode_layer``/``decode`` on
the transcoder our loader returns, by path and by registered repo id from the offline Hub) equal
the reference's ``encode``/``decode`` in fp32; every layout it refuses is refused here with one
TranscoderValidationError naming the file and key.

Rows ``| combination | via | max |features| diff | max |recon| diff |`` are printed (``-s``).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_interp import hookimpl
from qwen_interp.specs import TranscoderRelease
from qwen_interp.apps.testing.clt_native import random_clt, write_native

N_BASE, D, F, POS = 5, 8, 16, 6  # base model layers, d_model, d_latent, positions
LI = [0, 2, 3]  # covered model layers when layer_indices is set (1 and 4 uncovered)
K = {"topk": 5, "topk_all": 12}
ATOL = 1e-5
LAYOUTS = ("single_file", "layer_weights")
COMBOS = list(itertools.product(LAYOUTS, (1, 2), ("input_layer", "output_layer"),
                                ("relu", "jumprelu", "topk", "topk_all"), (False, True)))
REPO_PREFIX = "bluelightai-test/clt-native"


def name(combo) -> str:
    layout, version, decoder, activation, indices = combo
    return f"{layout}-v{version}-{decoder}-{activation}" + ("-li" if indices else "")


def write_args(combo, model: str) -> dict:
    """write_native arguments: the combination, plus variations the reference also reads:
    configs relying on every default (output_layer), norm factors (n,) or (n, 1, 1), decoder.b
    absent (topk)."""
    layout, version, decoder, activation, indices = combo
    return dict(layout=layout, config_version=version, decoder_layout=decoder,
                activation=activation, k=K.get(activation), layer_indices=LI if indices else None,
                n_layers=N_BASE, base_model_name=model, minimal_config=decoder == "output_layer",
                nf_shape="cube" if version == 2 else "vector", decoder_bias=activation != "topk")


def raw_for(combo, seed):
    return random_clt(len(LI) if combo[4] else N_BASE, D, F, seed=seed)


@pytest.fixture(scope="module")
def reference():
    """BluelightAI's InferenceCLT, imported from the vendored file."""
    path = Path(__file__).parent / "reference" / "inference_clt.py"
    spec = importlib.util.spec_from_file_location("bluelight_inference_clt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InferenceCLT


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The base model's facts (what validation reads): d_model D, N_BASE layers."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "config.json").write_text(json.dumps({"hidden_size": D,
                                                    "num_hidden_layers": N_BASE}))
    return str(folder)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model_dir, qwen_offline_hub):
    """combination -> (local folder, repo id): each written once, also stored in the offline Hub
    under a repo id registered as a qwen-interp transcoder release."""
    import qwen_interp
    root = tmp_path_factory.mktemp("native")
    out = {}
    for seed, combo in enumerate(COMBOS):
        folder = write_native(root / name(combo), raw_for(combo, seed),
                              **write_args(combo, model_dir))
        repo = f"{REPO_PREFIX}-{name(combo)}"
        qwen_offline_hub.snapshot(repo, lambda dst, src=folder: shutil.copytree(
            src, dst, dirs_exist_ok=True))
        out[combo] = (folder, repo)

    class TestReleases:
        @hookimpl
        def register_transcoder_releases(register):
            for _, repo in out.values():
                register(TranscoderRelease(repo, model_dir, n_layers=N_BASE, d_latent=F,
                                           feature_input_hook="mlp.hook_in",
                                           feature_output_hook="mlp.hook_out"))

    qwen_interp.register_plugin(TestReleases, name="native-reference-test-releases")
    yield out
    qwen_interp.unregister_plugin(TestReleases)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def load_ours(ref: str, lazy_decoder: bool = True):
    import qwen_interp  # noqa: F401  (arms the adapter)
    from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
    return load_transcoder_from_hub(ref, device=torch.device("cpu"), dtype=torch.float32,
                                    lazy_decoder=lazy_decoder)


def decode_all(clt, features):
    """circuit-tracer's decode; it sizes its output by the last position with an active feature,
    so positions after it (no active feature: the reconstruction is the bias) are added back."""
    out = clt.decode(features.to_sparse())
    missing = features.shape[1] - out.shape[1]
    if missing:
        bias = clt.b_dec[:, None].expand(-1, missing, -1)
        out = torch.cat([out, bias.to(out.dtype)], dim=1)
    return out


def compare(clt, ref_clt, cover) -> tuple[float, float]:
    """Max |difference| of features and reconstructions, ours vs the reference, on the same
    inputs; model layers outside ``cover`` must stay silent."""
    x = torch.randn(N_BASE, POS, D, generator=torch.Generator().manual_seed(7)) * 2
    with torch.no_grad():
        ref_f = ref_clt.encode(x[cover])
        ref_out = ref_clt.decode(ref_f)
        f = clt.encode(x)
        out = decode_all(clt, f)
        # The attribution path and the per-layer path (get_activations, interventions).
        sparse, _ = clt.encode_sparse(x, zero_positions=slice(0, 0))
        per_layer = torch.stack([clt.encode_layer(x[m][None], m)[0] for m in range(N_BASE)])
    assert (ref_f != 0).float().mean() > 0.02  # not vacuous
    others = [m for m in range(N_BASE) if m not in cover]
    assert not f[others].any() and not out[others].any()
    torch.testing.assert_close(sparse.to_dense(), f, atol=0, rtol=0)
    torch.testing.assert_close(per_layer, f, atol=0, rtol=0)
    feat = float((f[cover] - ref_f).abs().max())
    recon = float((out[cover] - ref_out).abs().max())
    return feat, recon


@pytest.mark.parametrize("via", ["path", "repo id"])
@pytest.mark.parametrize("combo", COMBOS, ids=[name(c) for c in COMBOS])
def test_matches_reference(combo, via, checkpoints, reference):
    folder, repo = checkpoints[combo]
    if via == "path":
        ref_clt = reference.load_from_disk(folder)
        clt, config = load_ours(str(folder), lazy_decoder=False)
    else:
        ref_clt = reference.load_from_huggingface(repo)
        clt, config = load_ours(repo)
        assert config["repo_id"] == repo
    assert config["format"] == "bluelight_native"
    assert (clt.feature_input_hook, clt.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
    assert clt.n_layers == N_BASE
    feat, recon = compare(clt, ref_clt, LI if combo[4] else list(range(N_BASE)))
    print(f"\n| {name(combo)} | {via} | {feat:.1e} | {recon:.1e} |")
    assert feat <= ATOL and recon <= ATOL


# --- variations the reference reads ---------------------------------------------------------
def _rewrite(path: Path, edit) -> None:
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def _json_edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _extra_listed_file(folder):  # listed in the manifest, never written: skipped
    _json_edit(folder / "manifest.json", lambda m: m["files"].append("optimizer.safetensors"))


def _output_rows_full(folder):  # output_layer decoders with all n rows: rows past i unread
    def edit(t):
        for key in [k for k in t if k.startswith("decoder.decoders.")]:
            W = t[key]
            t[key] = torch.cat([W, torch.randn(N_BASE - W.shape[0], F, D)]).contiguous()
    _rewrite(folder / "clt.safetensors", edit)


def _one_norm_factor(folder):  # one value for every layer: the reference broadcasts it
    def edit(t):
        t["norm_factor_in"] = torch.tensor([0.75])
        t["norm_factor_out"] = torch.tensor([1.5])
    _rewrite(folder / "clt.safetensors", edit)


VARIANTS = {
    "layer_weights, manifest lists a missing file": (
        dict(layout="layer_weights", activation="jumprelu"), _extra_listed_file),
    "single_file output_layer, decoders with n rows": (
        dict(decoder_layout="output_layer", activation="relu"), _output_rows_full),
    "single_file, one norm factor for all layers": (dict(activation="topk_all", k=12),
                                                    _one_norm_factor),
    "bf16 tensors, config dtype float32": (dict(activation="jumprelu", dtype="bfloat16",
                                                config_dtype="float32"), None),
    "layer_weights v2, keys by covered index": (
        dict(layout="layer_weights", config_version=2, activation="topk", k=5,
             layer_indices=LI, manifest_layer_indices=False), None),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_the_reference_reads(variant, tmp_path, model_dir, reference):
    kwargs, edit = VARIANTS[variant]
    li = kwargs.get("layer_indices")
    raw = random_clt(len(li) if li else N_BASE, D, F, seed=100)
    folder = write_native(tmp_path / "src", raw, n_layers=N_BASE, base_model_name=model_dir,
                          **kwargs)
    if edit is not None:
        edit(folder)
    ref_clt = reference.load_from_disk(folder)
    clt, _ = load_ours(str(folder))
    feat, recon = compare(clt, ref_clt, li or list(range(N_BASE)))
    print(f"\n| {variant} | path | {feat:.1e} | {recon:.1e} |")
    assert feat <= ATOL and recon <= ATOL


# --- what the reference refuses -------------------------------------------------------------
def _drop(file, *keys):
    def edit(folder):
        _rewrite(folder / file, lambda t: [t.pop(k) for k in keys])
    return edit


def _add(file, key):
    def edit(folder):
        _rewrite(folder / file, lambda t: t.__setitem__(key, torch.zeros(2)))
    return edit


def _config(edit_fn):
    return lambda folder: _json_edit(folder / "model_config.json", edit_fn)


# name -> (write_native kwargs, edit, reference's exception and message, our file, key, message)
REFUSED = {
    "unsupported format": (
        dict(layout="layer_weights"),
        lambda f: _json_edit(f / "manifest.json", lambda m: m.__setitem__("format", "sharded")),
        ValueError, "Unsupported format: sharded",
        "manifest.json", "format", "unsupported format 'sharded'"),
    "unsupported decoder layout (v1)": (
        dict(), _config(lambda c: c.__setitem__("decoder_layout", "shared")),
        ValueError, "Unsupported decoder layout: shared",
        "model_config.json", "decoder_layout", "unsupported decoder layout 'shared'"),
    "unsupported decoder layout (v2)": (
        dict(config_version=2),
        _config(lambda c: c["architecture"]["decoder"].__setitem__("layout", "layer_connections")),
        ValueError, "Unsupported decoder layout: layer_connections",
        "model_config.json", "architecture.decoder.layout", "unsupported decoder layout"),
    "missing norm_factor_in": (
        dict(), _drop("clt.safetensors", "norm_factor_in"),
        ValueError, "missing normalization factors",
        "clt.safetensors", "norm_factor_in", "tensor is missing"),
    "missing norm_factor_out (layer_weights)": (
        dict(layout="layer_weights"), _drop("decoder.safetensors", "norm_factor_out"),
        ValueError, "missing output normalization factors",
        "manifest.json", "norm_factor_out", "no listed file holds norm_factor_out"),
    "jumprelu without log_threshold": (
        dict(activation="jumprelu"), _drop("clt.safetensors", "activation.log_threshold"),
        ValueError, "JumpReLU model missing activation.log_threshold",
        "clt.safetensors", "activation.log_threshold", "tensor is missing (jumprelu"),
    "jumprelu without log_threshold (layer_weights)": (
        dict(layout="layer_weights", activation="jumprelu"),
        _drop("encoder.safetensors", "log_threshold"),
        ValueError, "JumpReLU model missing activation.log_threshold",
        "manifest.json", "activation.log_threshold", "no listed file holds log_threshold"),
    "unknown key": (
        dict(layout="layer_weights"), _add("encoder.safetensors", "W_enc_extra"),
        ValueError, "Unknown key W_enc_extra",
        "encoder.safetensors", "W_enc_extra", "unknown key"),
    "unknown key (one part)": (
        dict(layout="layer_weights"), _add("decoder.safetensors", "scale"),
        ValueError, "Unknown key scale",
        "decoder.safetensors", "scale", "unknown key"),
    # The reference fails later with a raw KeyError on these:
    "decoder layer not in layer_indices": (
        dict(layout="layer_weights", layer_indices=LI), _add("layer_0.safetensors", "W_dec_1"),
        KeyError, "1",
        "layer_0.safetensors", "W_dec_1", "layer 1 is not in manifest.json's layer_indices"),
    "listed decoder file missing": (
        dict(layout="layer_weights"), lambda f: (f / "layer_1.safetensors").unlink(),
        KeyError, "decoder.decoders.1.W",
        "layer_1.safetensors", None, "file is missing: manifest.json lists it"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_like_the_reference(case, tmp_path, model_dir, reference, cache):
    from qwen_interp_circuit_tracer import TranscoderValidationError
    kwargs, edit, ref_exc, ref_msg, file_name, key, message = REFUSED[case]
    kwargs = {"activation": "relu", **kwargs}
    li = kwargs.get("layer_indices")
    raw = random_clt(len(li) if li else N_BASE, D, F, seed=200)
    folder = write_native(tmp_path / "src", raw, n_layers=N_BASE, base_model_name=model_dir,
                          **kwargs)
    edit(folder)
    with pytest.raises(ref_exc, match=ref_msg):
        reference.load_from_disk(folder)
    with pytest.raises(TranscoderValidationError) as info:
        load_ours(str(folder))
    err = info.value
    print(f"\n| {case} | {type(err).__name__}: {err.problem} |")
    assert Path(err.path).name == file_name and err.tensor == key, str(err)
    assert message in str(err)
    assert not cache.exists() or not any(cache.rglob("*.safetensors"))  # nothing converted


def test_topk_with_default_k_is_refused(tmp_path, model_dir, reference):
    """Departure, on purpose: a topk config without k reads as k = 0 in the reference, whose
    features are then all zero; here it is refused."""
    from qwen_interp_circuit_tracer import TranscoderValidationError
    folder = write_native(tmp_path / "src", random_clt(N_BASE, D, F), activation="topk",
                          n_layers=N_BASE, base_model_name=model_dir)
    x = torch.randn(N_BASE, POS, D)
    assert not reference.load_from_disk(folder).encode(x).any()
    with pytest.raises(TranscoderValidationError,
                       match=r"model_config.json \[k\]: topk needs k > 0"):
        load_ours(str(folder))


def test_v1_without_hook_attrs(tmp_path, model_dir, reference, qwen_offline_hub):
    """A v1 config may leave out input_attr/output_attr (the reference then has no hook points).
    Loaded by a registered repo id, the release's hooks stand in and the features match the
    reference; by path there is nothing to take them from: one clear error."""
    import qwen_interp
    from qwen_interp_circuit_tracer import TranscoderValidationError
    folder = write_native(tmp_path / "src", random_clt(N_BASE, D, F, seed=300), activation="relu",
                          n_layers=N_BASE, base_model_name=model_dir, input_attr=None,
                          output_attr=None, minimal_config=True)
    assert reference.load_from_disk(folder).input_attr is None
    with pytest.raises(TranscoderValidationError,
                       match=r"model_config.json \[input_attr\]: not set, and no registered"):
        load_ours(str(folder))
    repo = f"{REPO_PREFIX}-v1-without-attrs"
    qwen_offline_hub.snapshot(repo, lambda dst: shutil.copytree(folder, dst, dirs_exist_ok=True))

    class Release:
        @hookimpl
        def register_transcoder_releases(register):
            register(TranscoderRelease(repo, model_dir, n_layers=N_BASE, d_latent=F,
                                       feature_input_hook="mlp.hook_in",
                                       feature_output_hook="mlp.hook_out"))

    qwen_interp.register_plugin(Release, name="native-reference-v1-without-attrs")
    try:
        clt, _ = load_ours(repo)
    finally:
        qwen_interp.unregister_plugin(Release)
    assert (clt.feature_input_hook, clt.feature_output_hook) == ("mlp.hook_in", "mlp.hook_out")
    feat, recon = compare(clt, reference.load_from_huggingface(repo), list(range(N_BASE)))
    assert feat <= ATOL and recon <= ATOL
