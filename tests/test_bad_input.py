"""Bad input a user can type gets one clear error (InputError, or TranscoderValidationError for a
CLT folder) naming the value and what was expected, before weights load or the model runs;
nothing is silently changed (long prompts are not cut to n_ctx).

Models: the small offline Qwen3-1.7B-Base stand-in and its registered CLT (tests build them)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import SEED_PROMPT

MODEL = "Qwen/Qwen3-1.7B-Base"
CLT = "bluelightai/clt-qwen3-1.7b-base-20k"
N_CTX = 32
LONG = "one two three four five six seven eight nine ten " * 8  # > N_CTX tokens


@pytest.fixture(scope="module")
def hub(qwen_offline_hub, qwen_registry):
    spec = qwen_registry.model(MODEL)
    qwen_offline_hub.transcoder(qwen_registry.transcoder_release(CLT), spec)
    return qwen_offline_hub


@pytest.fixture(scope="module")
def rm(hub):
    import qwen_interp  # noqa: F401
    from circuit_tracer import ReplacementModel
    return ReplacementModel.from_pretrained(MODEL, CLT, device=torch.device("cpu"), n_ctx=N_CTX)


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if the CLT or the model starts loading."""
    import qwen_interp  # noqa: F401
    from circuit_tracer.replacement_model import replacement_model
    from circuit_tracer.utils import hf_utils
    from transformer_lens import HookedTransformer

    def must_not_load(*args, **kwargs):
        raise AssertionError("loading started")

    monkeypatch.setattr(replacement_model, "load_transcoder_from_hub", must_not_load)
    monkeypatch.setattr(hf_utils, "load_transcoder_from_hub", must_not_load)
    monkeypatch.setattr(HookedTransformer, "from_pretrained", must_not_load)


# --- model name, dtype ----------------------------------------------------------------------
def test_model_name_typo_with_registered_clt_fails_before_the_clt_loads(hub, no_loading):
    from circuit_tracer import ReplacementModel
    from qwen_interp.errors import InputError
    with pytest.raises(InputError) as info:
        ReplacementModel.from_pretrained("Qwen/Qwen3-1.7B-Bsae", CLT)
    msg = str(info.value)
    assert "model 'Qwen/Qwen3-1.7B-Bsae' is not a model TransformerLens knows" in msg
    assert "did you mean 'Qwen/Qwen3-1.7B-Base'" in msg and "Nothing was loaded" in msg
    assert f"the CLT {CLT} was trained on Qwen/Qwen3-1.7B-Base" in msg


def test_session_model_name_typo_fails_before_the_clt_loads(hub, no_loading):
    from qwen_interp.errors import InputError
    from qwen_interp.apps.session import Session
    with pytest.raises(InputError, match="did you mean 'Qwen/Qwen3-1.7B-Base'"):
        Session.from_pretrained("Qwen/Qwen3-1.7B-Bsae", CLT, device="cpu")


@pytest.mark.parametrize("dtype", ["bfloat61", "int8", 16])
def test_unknown_dtype_fails_before_loading(hub, no_loading, dtype):
    from circuit_tracer import ReplacementModel
    from qwen_interp.errors import InputError
    from qwen_interp.apps.session import Session
    with pytest.raises(InputError, match=rf"dtype={dtype!r}: expected a torch dtype or one of"):
        ReplacementModel.from_pretrained(MODEL, CLT, dtype=dtype)
    with pytest.raises(InputError, match=rf"dtype={dtype!r}: expected a torch dtype"):
        Session.from_pretrained(MODEL, CLT, dtype=dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "torch.bfloat16"])
def test_string_dtype_is_converted(hub, dtype):
    import qwen_interp  # noqa: F401
    from circuit_tracer import ReplacementModel
    model = ReplacementModel.from_pretrained(MODEL, CLT, device=torch.device("cpu"), dtype=dtype)
    assert model.cfg.dtype == torch.bfloat16
    assert model.transcoders.W_enc.dtype == torch.bfloat16


def test_session_string_dtype_is_converted(hub):
    from qwen_interp.apps.session import Session
    session = Session.from_pretrained(MODEL, CLT, device="cpu", dtype="float16")
    assert session.model.cfg.dtype == torch.float16


# --- CLT folder that does not fit the model ---------------------------------------------------
def clt_folder(tmp_path, d_model, n_layers, config):
    from qwen_interp.apps.testing.clt_native import random_clt, write_hub
    return write_hub(tmp_path / "clt", random_clt(n_layers, d_model, 8, norm_factors=False),
                     config=config)


def model_shape(hub, registry):
    cfg = json.loads((hub.model(registry.model(MODEL)) / "config.json").read_text())
    return cfg["hidden_size"], cfg["num_hidden_layers"]


def test_config_hook_that_does_not_exist(hub, qwen_registry, tmp_path, monkeypatch):
    import circuit_tracer.transcoder.cross_layer_transcoder as ctl
    from circuit_tracer import ReplacementModel
    from qwen_interp_circuit_tracer import TranscoderValidationError
    from transformer_lens import HookedTransformer
    d_model, n_layers = model_shape(hub, qwen_registry)
    folder = clt_folder(tmp_path, d_model, n_layers, {
        "model_kind": "cross_layer_transcoder", "feature_input_hook": "mlp.hook_nope",
        "feature_output_hook": "mlp.hook_out"})
    for obj, name in ((ctl, "_load_state_dict"), (ctl, "load_clt"),
                      (HookedTransformer, "from_pretrained")):
        monkeypatch.setattr(obj, name, lambda *a, **k: pytest.fail("loading started"))
    with pytest.raises(TranscoderValidationError) as info:
        ReplacementModel.from_pretrained(MODEL, str(folder), device=torch.device("cpu"))
    err = info.value
    assert err.path == str(folder / "config.yaml") and err.tensor == "feature_input_hook"
    assert f"'mlp.hook_nope' is not a hook point in the blocks of {MODEL}" in str(err)
    assert "did you mean 'mlp.hook_in'" in str(err)


def test_tl_block_hook_names_are_the_models(hub):
    """The names checked against are HookedTransformer's own, with circuit-tracer's MLP wrapper."""
    import qwen_interp
    from qwen_interp_circuit_tracer.adapter import block_hook_names
    names = block_hook_names(MODEL, "transformerlens", qwen_interp.registry())
    assert {"mlp.hook_in", "mlp.hook_out", "hook_resid_mid", "hook_mlp_out",
            "ln2.hook_normalized", "mlp.old_mlp.hook_pre"} <= names
    assert "mlp.hook_pre" not in names  # wrapped: circuit-tracer could not find it


def test_clt_without_model_name_and_wrong_width(hub, qwen_registry, tmp_path):
    """No ``model_name`` in config.yaml: the width is checked against the paired model before
    anything is loaded, not at the first einsum."""
    import qwen_interp  # noqa: F401
    from circuit_tracer import ReplacementModel
    from qwen_interp_circuit_tracer import TranscoderValidationError
    d_model, n_layers = model_shape(hub, qwen_registry)
    folder = clt_folder(tmp_path, d_model + 8, n_layers, {
        "model_kind": "cross_layer_transcoder", "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "mlp.hook_out"})
    with pytest.raises(TranscoderValidationError) as info:
        ReplacementModel.from_pretrained(MODEL, str(folder), device=torch.device("cpu"))
    assert info.value.path == str(folder / "W_enc_0.safetensors")
    assert f"d_model {d_model + 8}, but {MODEL} has d_model {d_model}" in str(info.value)


# --- prompts ----------------------------------------------------------------------------------
BAD_PROMPTS = [
    ("", "is the empty string: there is no token to run or attribute"),
    ("ok \ud800 text", r"has a lone surrogate '\\ud800' \(U\+D800\) at character 3"),
    (SEED_PROMPT.encode(), "is bytes, expected str .or token ids.: decode it first"),
]


@pytest.mark.parametrize("prompt,message", BAD_PROMPTS)
def test_attribute_refuses_bad_prompts(rm, prompt, message):
    from circuit_tracer import attribute
    from qwen_interp.errors import InputError
    with pytest.raises(InputError, match="prompt " + message):
        attribute(prompt, rm)


@pytest.mark.parametrize("prompt,message", BAD_PROMPTS)
def test_get_activations_refuses_bad_prompts(rm, prompt, message):
    from qwen_interp.errors import InputError
    with pytest.raises(InputError, match="get_activations input " + message):
        rm.get_activations(prompt)


@pytest.fixture(scope="module")
def session(rm):
    from qwen_interp.apps.session import Session
    return Session(rm)


@pytest.mark.parametrize("prompt,message", BAD_PROMPTS)
def test_session_run_refuses_bad_prompts(session, prompt, message):
    from qwen_interp.errors import InputError
    with pytest.raises(InputError, match="Session input " + message):
        session.run(prompt)


def test_empty_token_ids_are_refused(session):
    from qwen_interp.errors import InputError
    with pytest.raises(InputError, match="Session input has no tokens"):
        session.run(torch.zeros(1, 0, dtype=torch.long))


# --- prompts longer than n_ctx: an error, not a silent cut ------------------------------------
def test_hooked_transformer_string_longer_than_n_ctx(rm):
    from qwen_interp.errors import InputError
    n_tokens = rm.to_tokens(LONG, truncate=False).shape[-1]
    assert n_tokens > N_CTX
    with pytest.raises(InputError) as info:
        rm(LONG)
    msg = str(info.value)
    assert f"is {n_tokens} tokens, longer than the model's context n_ctx={N_CTX}" in msg
    assert "QWEN_INTERP_N_CTX" in msg and "from_pretrained(..., n_ctx=N)" in msg
    assert "to_tokens(..., truncate=True) cuts it to n_ctx on purpose" in msg
    # An explicit truncate=True still cuts, as upstream documents.
    assert rm.to_tokens(LONG, truncate=True).shape[-1] == N_CTX


def test_other_architectures_keep_upstream_truncation(rm):
    cfg = rm.cfg
    saved = cfg.original_architecture
    cfg.original_architecture = "LlamaForCausalLM"  # not a Qwen3 model: upstream unchanged
    try:
        assert rm.to_tokens(LONG).shape[-1] == N_CTX
    finally:
        cfg.original_architecture = saved


def test_session_without_clt_refuses_long_string(hub):
    from qwen_interp.errors import InputError
    from qwen_interp.apps.session import Session
    session = Session.from_pretrained(MODEL, device="cpu", n_ctx=N_CTX)
    with pytest.raises(InputError, match=rf"Session input is \d+ tokens, longer than the "
                                         rf"model's context n_ctx={N_CTX}"):
        session.run(LONG)
    assert session.run(SEED_PROMPT).logits.shape[1] < N_CTX


def test_attribute_and_session_with_clt_refuse_long_prompts(rm, session):
    from circuit_tracer import attribute
    from qwen_interp.errors import InputError
    with pytest.raises(InputError, match=rf"prompt is \d+ tokens, longer than "
                                         rf"the model's context n_ctx={N_CTX}"):
        attribute(LONG, rm)
    with pytest.raises(InputError, match=r"is \d+ tokens, longer than the model's context"):
        session.run(LONG)


# --- Qwen-Scope SAE layer not in the offline cache ----------------------------------------------
def test_uncached_sae_layer_offline(hub, qwen_registry):
    import qwen_interp  # noqa: F401
    from qwen_interp.errors import CheckpointError
    from sae_lens import SAE
    release = next(r for r in qwen_registry.sae_releases.values()
                   if r.model_repo_id == MODEL)
    layer = release.n_layers - 1
    with pytest.raises(CheckpointError) as info:
        SAE.from_pretrained(release.release, f"layer{layer}")
    msg = str(info.value)
    assert f"{release.release} layer{layer}: layer{layer}.sae.pt of {release.repo_id}" in msg
    assert "is not in the local Hugging Face cache and HF_HUB_OFFLINE=1 forbids" in msg
    assert isinstance(info.value, FileNotFoundError)
