"""Fast Qwen3 loading into HookedTransformer (fast_load.py).

Every parameter and buffer equals upstream's ``from_pretrained`` (QWEN_INTERP_FAST_LOAD=0) with
the same arguments, bit for bit on the CPU (W_U in one chunk: same layout and kernel); with the
unembedding split in chunks the centring mean is summed in another order, so W_U is compared
within 2 ulps of its dtype there. Subclasses (HookedSAETransformer, circuit-tracer's
ReplacementModel) go through it; deactivate() restores upstream's classmethod object; loading a
mid-size stand-in grows peak RSS by little more than the model's bytes (upstream: > 2x).
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import run_python

DENSE = ["Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-4B-Base",
         "Qwen/Qwen3-8B-Base", "Qwen/Qwen3-14B-Base"]
MODES = {
    "default": lambda cls: dict(fn=cls.from_pretrained, kw={}),
    "circuit_tracer": lambda cls: dict(fn=cls.from_pretrained, kw=dict(
        fold_ln=False, center_writing_weights=False, center_unembed=False)),
    "no_processing": lambda cls: dict(fn=cls.from_pretrained_no_processing, kw={}),
}


def fl():
    import qwen_interp_transformerlens.fast_load as m
    return m


def load_both(monkeypatch, cls, name, mode, dtype):
    call = MODES[mode](cls)
    ours = call["fn"](name, device="cpu", dtype=dtype, **call["kw"])
    assert fl().last_path == "fast"
    monkeypatch.setenv(fl().ENV, "0")
    up = call["fn"](name, device="cpu", dtype=dtype, **call["kw"])
    assert fl().last_path.startswith("upstream")
    monkeypatch.delenv(fl().ENV)
    return ours, up


def assert_same(ours, up, ulps_wu: int = 0):
    a, b = ours.state_dict(), up.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                and a[k].device == b[k].device), k
        if ulps_wu and k == "unembed.W_U":
            eps = torch.finfo(a[k].dtype).eps
            tol = ulps_wu * eps * b[k].abs().float().clamp_min(eps)
            assert ((a[k].float() - b[k].float()).abs() <= tol).all(), k
        else:
            assert torch.equal(a[k], b[k]), (k, (a[k].float() - b[k].float()).abs().max())
        assert a[k].is_contiguous() == b[k].is_contiguous(), k
    for (n1, p1), (n2, p2) in zip(ours.named_parameters(), up.named_parameters()):
        assert n1 == n2 and p1.requires_grad == p2.requires_grad
    assert ours.cfg.normalization_type == up.cfg.normalization_type
    assert type(ours.ln_final) is type(up.ln_final)


@pytest.mark.slow
@pytest.mark.parametrize("repo_id", DENSE)
def test_equals_upstream(repo_id, monkeypatch, qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model(repo_id))
    for mode in MODES:
        for dtype in (torch.float32, torch.bfloat16):
            ours, up = load_both(monkeypatch, HookedTransformer, repo_id, mode, dtype)
            assert_same(ours, up)


def test_chunked_unembed_and_local_dir(monkeypatch, qwen_offline_hub, qwen_registry):
    """W_U processed in 64-column blocks (tiny budget): every other tensor still exact."""
    from transformer_lens import HookedTransformer
    path = qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-8B-Base"))
    monkeypatch.setenv(fl().ENV_CHUNK_MB, "0.01")
    for dtype in (torch.float32, torch.bfloat16):
        ours, up = load_both(monkeypatch, HookedTransformer, str(path), "default", dtype)
        assert_same(ours, up, ulps_wu=2)


@pytest.mark.parametrize("repo_id", ["Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-8B-Base"])
def test_logits_match_hf(repo_id, qwen_offline_hub, qwen_registry):
    from transformers import AutoModelForCausalLM
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model(repo_id))
    ids = torch.randint(0, 151643, (2, 12), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch.float32)
    with torch.no_grad():
        ref = hf(ids).logits
        raw = HookedTransformer.from_pretrained_no_processing(repo_id, device="cpu")(ids)
        assert fl().last_path == "fast"
        proc = HookedTransformer.from_pretrained(repo_id, device="cpu")(ids)
    assert (raw - ref).abs().max().item() <= 1e-4
    assert (proc.log_softmax(-1) - ref.log_softmax(-1)).abs().max().item() <= 1e-4
    assert ref.std().item() > 0.5


def test_hooked_sae_transformer(monkeypatch, qwen_offline_hub, qwen_registry):
    from sae_lens import HookedSAETransformer
    qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-1.7B-Base"))
    ours, up = load_both(monkeypatch, HookedSAETransformer, "qwen3-1.7b-base", "default",
                         torch.float32)
    assert type(ours) is HookedSAETransformer
    assert_same(ours, up)


def test_circuit_tracer_replacement_model(monkeypatch, qwen_offline_hub, qwen_registry):
    from circuit_tracer import ReplacementModel
    spec = qwen_registry.model("Qwen/Qwen3-1.7B-Base")
    qwen_offline_hub.transcoder(qwen_registry.transcoder_release("bluelight-qwen3-1.7b"), spec)
    ours = ReplacementModel.from_pretrained(spec.repo_id, "bluelight-qwen3-1.7b",
                                            device=torch.device("cpu"), dtype=torch.float32)
    assert fl().last_path == "fast"
    monkeypatch.setenv(fl().ENV, "0")
    up = ReplacementModel.from_pretrained(spec.repo_id, "bluelight-qwen3-1.7b",
                                          device=torch.device("cpu"), dtype=torch.float32)
    assert fl().last_path.startswith("upstream")
    assert type(ours) is type(up)
    assert_same(ours, up)
    with torch.no_grad():
        assert torch.equal(ours(ours.ensure_tokenized("The capital of France is")[None]),
                           up(up.ensure_tokenized("The capital of France is")[None]))


def test_fallbacks(qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-1.7B-Base"))
    with pytest.raises(AssertionError, match="rotary"):  # upstream's own answer
        HookedTransformer.from_pretrained("Qwen/Qwen3-1.7B-Base", device="cpu",
                                          refactor_factored_attn_matrices=True)
    assert fl().last_path.startswith("upstream: refactor")
    HookedTransformer.from_pretrained_no_processing("Qwen/Qwen3-1.7B-Base", device="cpu",
                                                    dtype=torch.float64)
    assert fl().last_path.startswith("upstream: dtype")


@pytest.mark.subprocess
def test_deactivate_restores_upstream_classmethod():
    out = run_python("""
import json, transformer_lens
from transformer_lens import HookedTransformer
pristine = HookedTransformer.__dict__["from_pretrained"]
import qwen_interp
patched = HookedTransformer.__dict__["from_pretrained"]
qwen_interp.activate()
again = HookedTransformer.__dict__["from_pretrained"]
qwen_interp.deactivate()
restored = HookedTransformer.__dict__["from_pretrained"]
qwen_interp.activate()
re = HookedTransformer.__dict__["from_pretrained"]
qwen_interp.deactivate()
print(json.dumps(dict(patched=patched is not pristine, again=again is patched,
    restored=restored is pristine, re=re is not pristine and isinstance(re, classmethod),
    final=HookedTransformer.__dict__["from_pretrained"] is pristine,
    no_subclass_attr=("from_pretrained"
                      not in __import__("sae_lens").HookedSAETransformer.__dict__))))
""")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == dict(
        patched=True, again=True, restored=True, re=True, final=True, no_subclass_attr=True)


MEMORY = """
import json, os, resource, sys, torch
torch.set_num_threads(2)
from transformers import AutoTokenizer
import qwen_interp
from transformer_lens import HookedTransformer
path = sys.argv[1]
tok = AutoTokenizer.from_pretrained(path)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1])
before = hwm()
m = HookedTransformer.from_pretrained(path, device="cpu", dtype=torch.bfloat16, tokenizer=tok)
import qwen_interp_transformerlens.fast_load as fl
nbytes = sum(t.numel() * t.element_size() for t in m.state_dict().values())
print(json.dumps(dict(growth_kb=hwm() - before, model_kb=nbytes // 1024, path=fl.last_path)))
"""


@pytest.fixture(scope="module")
def midsize_checkpoint(tmp_path_factory, qwen_offline_hub):
    """Qwen3 layout, d_model 1024, 6 layers, real vocabulary, tied, bf16 (~0.8 GB in TL)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from qwen_interp.apps.testing.hub import write_tokenizer
    path = tmp_path_factory.mktemp("midsize")
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                      num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=128, tie_word_embeddings=True, max_position_embeddings=4096)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(path)
    write_tokenizer(path)
    del model
    return path


@pytest.mark.slow
@pytest.mark.subprocess
def test_bounded_memory(midsize_checkpoint):
    """Peak RSS growth while loading (default processing, bf16, CPU): ours <= 1.25x the model's
    bytes; upstream's path > 2x (HF model + fp32 state dict + clones)."""
    res = {}
    for side, env in (("ours", {}), ("upstream", {"QWEN_INTERP_FAST_LOAD": "0"})):
        out = run_python(MEMORY.replace("sys.argv[1]", repr(str(midsize_checkpoint))), env=env)
        res[side] = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["ours"]["path"] == "fast" and res["upstream"]["path"].startswith("upstream")
    ratio = {k: v["growth_kb"] / v["model_kb"] for k, v in res.items()}
    print(ratio, res)
    assert ratio["ours"] <= 1.25, (ratio, res)
    assert ratio["upstream"] > 2.0, (ratio, res)
