"""The offline Hub: small stand-ins keep each checkpoint's architecture flags, the genuine Qwen
tokenizer is used, nothing reaches the network, and concurrent builders never expose a
half-written snapshot."""

from __future__ import annotations

import os

import pytest

from helpers import SEED_PROMPT
from qwen_interp.apps.testing import small_config


def test_small_configs_keep_architecture_flags(qwen3_specs):
    for spec in qwen3_specs:
        cfg = small_config(spec)
        assert cfg.tie_word_embeddings == spec.tied_embeddings, spec.repo_id
        assert (cfg.num_attention_heads // cfg.num_key_value_heads
                == spec.n_heads // spec.n_kv_heads), spec.repo_id
        # head_dim vs hidden/heads: 0.5 for 0.6B, 0.625 for 4B, 1 for the others.
        assert (cfg.hidden_size / (cfg.num_attention_heads * cfg.head_dim)
                == pytest.approx(spec.d_model / (spec.n_heads * spec.d_head))), spec.repo_id
        assert (cfg.vocab_size, cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (
            151936, 1e6, 1e-6, 32768)


def test_genuine_tokenizer_and_offline(qwen_offline_hub, qwen_registry):
    from transformers import AutoTokenizer
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    qwen_offline_hub.model(qwen_registry.model("Qwen/Qwen3-1.7B-Base"))
    tok = AutoTokenizer.from_pretrained("Qwen/Qwen3-1.7B-Base")
    # Known ids of the real Qwen2/Qwen3 BPE vocabulary; no BOS is added.
    assert tok(SEED_PROMPT).input_ids[:3] == [17417, 25, 576]
    assert tok.bos_token_id is None and tok.eos_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 151643
    # A repo that is not in the cache fails instead of being downloaded.
    with pytest.raises(OSError):
        AutoTokenizer.from_pretrained("Qwen/Qwen3-32B")


@pytest.mark.subprocess
def test_concurrent_builders_leave_one_complete_snapshot(tmp_path):
    code = f"""
import sys, time
from qwen_interp.apps.testing.hub import OfflineHub
def write(folder):
    (folder / "a.bin").write_bytes(b"x" * 1_000_000)
    time.sleep(0.5)                      # both processes are inside write() at once
    (folder / "b.txt").write_text(sys.argv[-1] if len(sys.argv) > 1 else "w")
print(OfflineHub({str(tmp_path)!r}).snapshot("acme/repo", write))
"""
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    snap = tmp_path / "hub" / "models--acme--repo" / "snapshots"
    assert [p.name for p in snap.iterdir()] == ["0" * 40]  # no leftover private folders
    assert sorted(f.name for f in (snap / ("0" * 40)).iterdir()) == ["a.bin", "b.txt"]


def test_failed_build_leaves_nothing(tmp_path):
    from qwen_interp.apps.testing.hub import OfflineHub
    hub = OfflineHub(tmp_path)

    def broken(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        hub.snapshot("acme/broken", broken)
    assert not hub.has("acme/broken")
    assert list((tmp_path / "hub" / "models--acme--broken" / "snapshots").iterdir()) == []
