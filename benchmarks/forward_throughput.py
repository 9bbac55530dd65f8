"""Benchmark (not a test): forward throughput, HF transformers vs TransformerLens.

Qwen3-1.7B-Base shapes (d_model 2048, 28 layers, 16/8 heads, head_dim 128, d_mlp 6144, vocab
151,936, tied), random bf16 weights in an offline HF cache, a batch of 8 x 512 random tokens,
``torch.no_grad()``, logits returned. Four sides, each in its own fresh process, one after the
other:

  hf_eager:    AutoModelForCausalLM, attn_implementation="eager" (the baseline upstream TL is
               usually compared with)
  hf_sdpa:     AutoModelForCausalLM, attn_implementation="sdpa"
  tl_upstream: HookedTransformer.from_pretrained with QWEN_INTERP_FAST_FORWARD=0 (TL's forward)
  tl_ours:     the same model with qwen-interp's default fast forward (fast_forward.py)

Both TL sides load the same weights (qwen-interp's default loading, TL's default processing), so
their outputs differ only by the forward. Per side: WARMUP untimed forwards, then ITERS timed
ones (CUDA-synchronised), tokens/s from the median; peak GPU memory of one forward. The parent
logs ratios vs hf_eager and the max |log-prob| differences on the first two sequences (ours vs
tl_upstream, each vs hf_eager). JSON lines to $OUT/forward_throughput.jsonl.

  python benchmarks/forward_throughput.py                  # GPU: build (once) + the four sides
  python benchmarks/forward_throughput.py --small          # CPU smoke: tiny config, fp32
  python benchmarks/forward_throughput.py measure SIDE [--small]   (one side; used internally)

Environment: FWD_BENCH_DIR (work folder), WARMUP, ITERS, BATCH, SEQ, FWD_SIDES (hf_sdpa can be
left out: FWD_SIDES=hf_eager,tl_upstream,tl_ours); for --small also
SMALL_LAYERS, SMALL_D_MODEL (the CPU ratio is about CPU kernels, not the H100 question).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import (QWEN3_1_7B_BASE, jsonl_logger, random_qwen3_snapshot, small_qwen3,
                     use_checkout_plugins)

SMALL = "--small" in sys.argv or "--cpu" in sys.argv
WORK = Path(os.environ.get("FWD_BENCH_DIR", "/tmp/fwdbench-small" if SMALL else "/tmp/fwdbench"))
os.environ["HF_HOME"] = str(WORK / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
MODEL = "Qwen/Qwen3-1.7B-Base"
ALL_SIDES = ["hf_eager", "hf_sdpa", "tl_upstream", "tl_ours"]
# FWD_SIDES: a comma-separated subset (the GPU suite leaves out hf_sdpa to save a process);
# hf_eager, tl_upstream and tl_ours are the comparison and always run.
SIDES = [s for s in ALL_SIDES
         if s in os.environ.get("FWD_SIDES", ",".join(ALL_SIDES)).split(",")
         or s != "hf_sdpa"]
BATCH = int(os.environ.get("BATCH", 2 if SMALL else 8))
SEQ = int(os.environ.get("SEQ", 64 if SMALL else 512))
WARMUP = int(os.environ.get("WARMUP", 1 if SMALL else 3))
ITERS = int(os.environ.get("ITERS", 3 if SMALL else 10))
PARITY_ROWS = 2

log = jsonl_logger("forward_throughput.jsonl")


def config_kwargs() -> dict:
    return small_qwen3() if SMALL else dict(QWEN3_1_7B_BASE)


def build() -> None:
    n_params = random_qwen3_snapshot(WORK / "hf", MODEL, config_kwargs(),
                                     "float32" if SMALL else "bfloat16", random_norms=True)
    if n_params is not None:
        log(phase="build", small=SMALL, params_m=round(n_params / 1e6, 1))


def load(side: str, device: str, dtype):
    if side.startswith("hf_"):
        from transformers import AutoModelForCausalLM
        return AutoModelForCausalLM.from_pretrained(
            MODEL, dtype=dtype, attn_implementation=side[3:]).to(device).eval()
    if side == "tl_upstream":
        os.environ["QWEN_INTERP_FAST_FORWARD"] = "0"
    use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens")
    from transformer_lens import HookedTransformer
    return HookedTransformer.from_pretrained(MODEL, dtype=dtype, device=device)


def sdpa_backends(device: str, dtype, cfg) -> dict:
    """Which SDPA backends run the fused path's call (causal, GQA) at these shapes."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(BATCH, cfg.n_heads, SEQ, cfg.d_head, device=device, dtype=dtype)
    kv = torch.randn(BATCH, cfg.n_key_value_heads or cfg.n_heads, SEQ, cfg.d_head,
                     device=device, dtype=dtype)
    out = {}
    for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
              SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH):
        try:
            with sdpa_kernel([b]):
                F.scaled_dot_product_attention(q, kv, kv, is_causal=True,
                                               enable_gqa=kv.shape[1] != q.shape[1])
            out[b.name] = True
        except Exception:  # noqa: BLE001 - not available for these inputs
            out[b.name] = False
    return out


def measure(side: str) -> None:
    import torch
    cuda = torch.cuda.is_available() and not SMALL
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    model = load(side, device, dtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 151643, (BATCH, SEQ), generator=g).to(device)

    def forward():
        out = model(ids)
        return out.logits if side.startswith("hf_") else out

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    with torch.no_grad():
        for _ in range(WARMUP):
            forward()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        if side == "tl_ours":
            import qwen_interp_transformerlens.fast_forward as ff
            ff.counts.clear()
        for _ in range(ITERS):
            t0 = time.perf_counter()
            logits = forward()
            sync()
            times.append(time.perf_counter() - t0)
    row = dict(side=side, small=SMALL, device=torch.cuda.get_device_name() if cuda else "cpu",
               dtype=str(dtype), batch=BATCH, seq=SEQ, iters=ITERS,
               median_s=round(statistics.median(times), 5), min_s=round(min(times), 5),
               tokens_per_s=round(BATCH * SEQ / statistics.median(times), 1),
               torch=torch.__version__)
    if cuda:
        row["peak_gpu_gb_over_start"] = round((torch.cuda.max_memory_allocated() - base) / 1e9, 3)
    if side == "tl_ours":
        row["fast_path_counts"] = dict(ff.counts)
        if cuda:
            row["sdpa_backends"] = sdpa_backends(device, dtype, model.cfg)
    torch.save(logits[:PARITY_ROWS].float().log_softmax(-1).cpu(), WORK / f"logp_{side}.pt")
    log(**row)


def main() -> None:
    if sys.argv[1:2] == ["measure"]:
        measure(sys.argv[2])
        return
    import torch
    if not SMALL and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --small for the CPU smoke mode")
    build()
    del torch
    flags = ["--small"] if SMALL else []
    for side in SIDES:
        subprocess.run([sys.executable, __file__, "measure", side, *flags], check=True)
    summarize()


def summarize() -> None:
    import torch
    rows = {}
    for line in (Path(os.environ.get("OUT", "/tmp/out")) / "forward_throughput.jsonl").open():
        r = json.loads(line)
        if r.get("side") in SIDES and (r.get("small"), r.get("batch"), r.get("seq")) == (
                SMALL, BATCH, SEQ):
            rows[r["side"]] = r  # the last run of each side
    base = rows["hf_eager"]["tokens_per_s"]
    logp = {s: torch.load(WORK / f"logp_{s}.pt") for s in SIDES}
    diff = lambda a, b: round((logp[a] - logp[b]).abs().max().item(), 6)  # noqa: E731
    log(summary="forward_throughput", small=SMALL, device=rows["tl_ours"]["device"],
        tokens_per_s={s: rows[s]["tokens_per_s"] for s in SIDES},
        ratio_vs_hf_eager={s: round(rows[s]["tokens_per_s"] / base, 3) for s in SIDES},
        ours_vs_upstream_tl=round(rows["tl_ours"]["tokens_per_s"]
                                  / rows["tl_upstream"]["tokens_per_s"], 3),
        max_abs_logprob_diff=dict(ours_vs_tl_upstream=diff("tl_ours", "tl_upstream"),
                                  ours_vs_hf_eager=diff("tl_ours", "hf_eager"),
                                  tl_upstream_vs_hf_eager=diff("tl_upstream", "hf_eager"),
                                  **({"hf_sdpa_vs_hf_eager": diff("hf_sdpa", "hf_eager")}
                                     if "hf_sdpa" in SIDES else {})))


if __name__ == "__main__":
    main()
