"""TransformerLens vs HF transformers (the reference) for every registered Qwen3 checkpoint.

Small checkpoints with the real architecture flags, loaded by repo id from the offline cache and
from a local directory. Tolerances: fp32 max abs diff <= 1e-4 (log-probs with TL's default
processing, raw logits without processing, residual stream); bf16: TL's error against the
fp32 reference at most 1.5x HF's own bf16 error.
"""

from __future__ import annotations

import pytest
import torch

from helpers import SEED_PROMPT

QWEN3_BASE = ["Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-4B-Base",
              "Qwen/Qwen3-8B-Base", "Qwen/Qwen3-14B-Base"]


def hf_reference(name_or_path, ids, dtype):
    """HF logits and the output of every decoder layer (the last via a forward hook: HF's
    ``hidden_states[-1]`` is *after* the final norm)."""
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    last = {}
    h = hf.model.layers[-1].register_forward_hook(
        lambda m, a, o: last.setdefault("x", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = hf(ids, output_hidden_states=True)
    h.remove()
    resid = [*out.hidden_states[1:-1], last["x"]]
    return out.logits, resid


def prompt_ids(name_or_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(name_or_path)
    return tok(SEED_PROMPT, return_tensors="pt").input_ids


def test_every_base_checkpoint_is_registered(qwen3_specs):
    assert sorted(s.repo_id for s in qwen3_specs) == sorted(QWEN3_BASE)


@pytest.mark.parametrize("repo_id", QWEN3_BASE)
@pytest.mark.parametrize("source", ["repo_id", "directory"])
def test_tl_matches_hf_fp32(repo_id, source, qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    path = qwen_offline_hub.model(qwen_registry.model(repo_id))
    name = repo_id if source == "repo_id" else str(path)
    ids = prompt_ids(name)
    hf_logits, hf_resid = hf_reference(name, ids, torch.float32)

    tl = HookedTransformer.from_pretrained(name, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        logits, cache = tl.run_with_cache(ids)
    assert tl.cfg.n_layers == len(hf_resid)
    dlogp = (logits.log_softmax(-1) - hf_logits.log_softmax(-1)).abs().max().item()
    assert dlogp <= 1e-4, dlogp
    for n, ref in enumerate(hf_resid):
        diff = (cache[f"blocks.{n}.hook_resid_post"] - ref).abs().max().item()
        assert diff <= 1e-4, (n, diff)

    raw = HookedTransformer.from_pretrained_no_processing(name, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        dlogits = (raw(ids) - hf_logits).abs().max().item()
    assert dlogits <= 1e-4, dlogits
    # Guard against a vacuous comparison: the logits are not flat.
    assert hf_logits.std().item() > 0.5


@pytest.mark.parametrize("repo_id", ["Qwen/Qwen3-1.7B-Base", "Qwen/Qwen3-8B-Base"])
def test_tl_matches_hf_bf16(repo_id, qwen_offline_hub, qwen_registry):
    """bf16: TL's error against the fp32 reference is no larger than 1.5x HF's own bf16 error
    (max abs log-prob diff over the whole vocabulary)."""
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model(repo_id))
    ids = prompt_ids(repo_id)
    ref = hf_reference(repo_id, ids, torch.float32)[0].log_softmax(-1)
    hf_bf16 = hf_reference(repo_id, ids, torch.bfloat16)[0].float().log_softmax(-1)
    tl = HookedTransformer.from_pretrained_no_processing(repo_id, device="cpu",
                                                         dtype=torch.bfloat16)
    with torch.no_grad():
        tl_bf16 = tl(ids).float().log_softmax(-1)
    hf_err = (hf_bf16 - ref).abs().max().item()
    tl_err = (tl_bf16 - ref).abs().max().item()
    assert tl_err <= 1.5 * hf_err, (tl_err, hf_err)
    assert (tl_bf16.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.9


def test_alias_loads(qwen_offline_hub, qwen_registry):
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-1.7B-Base"))
    tl = HookedTransformer.from_pretrained_no_processing("qwen3-1.7b-base", device="cpu")
    assert tl.cfg.model_name == "Qwen3-1.7B-Base"


def test_n_ctx_default_and_env(qwen_offline_hub, qwen_registry, monkeypatch):
    from transformer_lens import HookedTransformer
    qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-1.7B-Base"))
    tl = HookedTransformer.from_pretrained_no_processing("Qwen/Qwen3-1.7B-Base", device="cpu")
    assert tl.cfg.n_ctx == 2048
    monkeypatch.setenv("QWEN_INTERP_N_CTX", "4096")
    tl = HookedTransformer.from_pretrained_no_processing("Qwen/Qwen3-1.7B-Base", device="cpu")
    assert tl.cfg.n_ctx == 4096
    # A position past the old 2048 limit runs and matches HF at that position.
    monkeypatch.setenv("QWEN_INTERP_N_CTX", "40000")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        HookedTransformer.from_pretrained_no_processing("Qwen/Qwen3-1.7B-Base", device="cpu")


def test_long_context_matches_hf(qwen_offline_hub, qwen_registry, monkeypatch):
    """Positions beyond the 2048 that TL hard-codes are computed like HF does."""
    from transformer_lens import HookedTransformer
    monkeypatch.setenv("QWEN_INTERP_N_CTX", "2304")
    qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-0.6B-Base"))
    ids = torch.randint(0, 150000, (1, 2300), generator=torch.Generator().manual_seed(0))
    hf_logits, _ = hf_reference("Qwen/Qwen3-0.6B-Base", ids, torch.float32)
    tl = HookedTransformer.from_pretrained_no_processing("Qwen/Qwen3-0.6B-Base", device="cpu")
    with torch.no_grad():
        diff = (tl(ids)[0, -8:] - hf_logits[0, -8:]).abs().max().item()
    assert diff <= 1e-4, diff
