"""What the GPU benchmarks share: a JSON-lines log under $OUT, the project's plugins from the
checkout (the GPU machine has no pip install of it, so no entry points), and a real-size
Qwen3-1.7B-Base snapshot folder in an offline HF cache. Each script keeps its own weights."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("OUT", "/tmp/out"))
COMMIT = "0" * 40

# Qwen/Qwen3-1.7B-Base's public config.json facts (FACTS.md §2), as Qwen3Config kwargs.
QWEN3_1_7B_BASE = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True,
                       rope_theta=1e6, rms_norm_eps=1e-6, torch_dtype="bfloat16",
                       bos_token_id=151643, eos_token_id=151643)


def jsonl_logger(file_name: str):
    """``log(**fields)``: print one JSON line and append it to ``$OUT/<file_name>``."""
    def log(**kw):
        print(json.dumps(kw), flush=True)
        OUT.mkdir(parents=True, exist_ok=True)
        with open(OUT / file_name, "a") as f:
            f.write(json.dumps(kw) + "\n")
    return log


def snapshot_dir(hf_home: Path, repo: str, tokenizer: bool = False) -> Path:
    """The offline-cache snapshot folder of ``repo`` (created, with refs/main); with
    ``tokenizer`` the Qwen tokenizer files (``QWEN_TOKENIZER_DIR``, else .whl/clt/tok) go in."""
    d = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    snap = d / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (d / "refs").mkdir(exist_ok=True)
    (d / "refs" / "main").write_text(COMMIT)
    if tokenizer:
        for f in Path(os.environ.get("QWEN_TOKENIZER_DIR", ROOT / ".whl/clt/tok")).iterdir():
            shutil.copy(f, snap / f.name)
    return snap


def random_qwen3_snapshot(hf_home: Path, repo: str, config: dict = QWEN3_1_7B_BASE,
                          dtype_name: str = "bfloat16", random_norms: bool = False) -> int | None:
    """A random-weight Qwen3ForCausalLM (seed 0, built on the GPU when there is one) saved with
    the Qwen tokenizer as ``repo``'s snapshot; returns its parameter count, or None when the
    snapshot already exists. ``random_norms``: norm gains uniform in [0.5, 1.5], so that
    TransformerLens' folding and centring have something to do."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    snap = snapshot_dir(hf_home, repo)
    if (snap / "config.json").exists():
        return None
    snapshot_dir(hf_home, repo, tokenizer=True)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(Qwen3Config(**config)).to(getattr(torch, dtype_name))
    if random_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(0.5, 1.5)
    model.save_pretrained(snap)
    return sum(p.numel() for p in model.parameters())


def use_checkout_plugins(*plugin_modules: str):
    """Import qwen_interp from the checkout and register the named built-in plugins by hand
    when they did not load through entry points; return the registry."""
    import importlib
    sys.path[:0] = [str(ROOT / "src"), str(ROOT / "plugins")]
    import qwen_interp
    pm = qwen_interp.plugin_manager()
    for name in plugin_modules:
        module = importlib.import_module(name)
        if not pm.is_registered(module):
            qwen_interp.register_plugin(module)
    return qwen_interp.registry()
