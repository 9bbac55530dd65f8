"""Benchmark (not a test): HookedTransformer.from_pretrained, upstream vs qwen-interp.

Qwen3-1.7B-Base shapes (d_model 2048, 28 layers, 16/8 heads, d_mlp 6144, vocab 151,936, tied),
random bf16 weights in an offline HF cache. Each side runs in its own fresh process (so peak host
RSS is its own), one after the other in one run:

  upstream: QWEN_INTERP_FAST_LOAD=0 (qwen-interp's name registration only; TL's own loading)
  ours:     qwen-interp's default (fast_load.py)

both ``HookedTransformer.from_pretrained(MODEL, dtype=bfloat16, device="cuda")`` with TL's default
processing and with circuit-tracer's flags
(fold_ln/center_writing_weights/center_unembed False). Measured: load time, peak GPU memory
(torch.cuda.max_memory_allocated), GPU memory held after load, peak host RSS (process), and the
logits on a fixed batch of 4 x 128 tokens, saved so the parent reports max |ours - upstream|.
Each (side, flags) pair runs in its own process. JSON lines to $OUT/model_load.jsonl.

  python benchmarks/model_load.py              # build (once) + both sides, both flag sets
  python benchmarks/model_load.py measure ours|upstream default|circuit_tracer
  python benchmarks/model_load.py --small      # CPU smoke: tiny fp32 model, both flag sets in
                                               # one process per side; parity only, no timing value
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import (QWEN3_1_7B_BASE, jsonl_logger, random_qwen3_snapshot, small_qwen3,
                     use_checkout_plugins)

SMALL = "--small" in sys.argv
WORK = Path(os.environ.get("LOAD_BENCH_DIR", "/tmp/loadbench-small" if SMALL else "/tmp/loadbench"))
os.environ["HF_HOME"] = str(WORK / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
MODEL = "Qwen/Qwen3-1.7B-Base"
FLAGS = {"default": {}, "circuit_tracer": dict(fold_ln=False, center_writing_weights=False,
                                               center_unembed=False)}


log = jsonl_logger("model_load.jsonl")


def build() -> None:
    config = small_qwen3() if SMALL else QWEN3_1_7B_BASE
    n_params = random_qwen3_snapshot(WORK / "hf", MODEL, config,
                                     "float32" if SMALL else "bfloat16", random_norms=True)
    if n_params is not None:
        log(phase="build", small=SMALL, model_gb=round(n_params * (4 if SMALL else 2) / 1e9, 3))


def measure(side: str, flags: str) -> None:
    """``flags``: one key of FLAGS, or several separated by commas (one process for all)."""
    import torch
    cuda = not SMALL
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    if side == "upstream":
        os.environ["QWEN_INTERP_FAST_LOAD"] = "0"
    use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens")
    from transformer_lens import HookedTransformer
    import qwen_interp_transformerlens.fast_load as fl
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151643, (4, 32 if SMALL else 128), generator=g).to(device)
    if cuda:
        torch.cuda.init()
    for name in flags.split(","):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t0 = time.time()
        model = HookedTransformer.from_pretrained(MODEL, dtype=dtype, device=device, **FLAGS[name])
        if cuda:
            torch.cuda.synchronize()
        load_s = time.time() - t0
        n_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        with torch.no_grad():
            logits = model(ids).float().cpu()
        torch.save(logits, WORK / f"logits_{side}_{name}.pt")
        record = dict(side=side, flags=name, small=SMALL, path=fl.last_path,
                      load_s=round(load_s, 2), param_gb=round(n_param_bytes / 1e9, 3),
                      host_peak_rss_gb=round(
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2))
        if cuda:
            peak = torch.cuda.max_memory_allocated() - base
            record.update(gpu_peak_gb=round(peak / 1e9, 3),
                          gpu_held_gb=round((torch.cuda.memory_allocated() - base) / 1e9, 3),
                          peak_over_params=round(peak / n_param_bytes, 3))
        log(**record)
        del model, logits
        if cuda:
            torch.cuda.empty_cache()


def main() -> None:
    if sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2], sys.argv[3])
        return
    build()
    # On the GPU each (side, flags) pair gets its own process, so that peak host RSS is its own;
    # the CPU smoke mode only checks parity and saves processes.
    runs = [(side, ",".join(FLAGS)) for side in ("upstream", "ours")] if SMALL else \
        [(side, flags) for flags in FLAGS for side in ("upstream", "ours")]
    for old in WORK.glob("logits_*.pt"):  # never compare the logits of an older run
        old.unlink()
    for side, flags in runs:
        subprocess.run([sys.executable, __file__, "measure", side, flags]
                       + (["--small"] if SMALL else []), check=True)
    import torch
    for flags in FLAGS:
        a = torch.load(WORK / f"logits_upstream_{flags}.pt")
        b = torch.load(WORK / f"logits_ours_{flags}.pt")
        lp = (a.log_softmax(-1) - b.log_softmax(-1)).abs().max().item()
        log(parity=flags, small=SMALL, max_abs_logit_diff=(a - b).abs().max().item(),
            max_abs_logprob_diff=lp, logits_std=a.std().item(), equal=bool(torch.equal(a, b)))


if __name__ == "__main__":
    main()
