"""Benchmark (not a test): attribute() memory and time, qwen-interp vs plain circuit-tracer.

Setup: Qwen3-1.7B-Base shapes with random weights, a BluelightAI-size CLT (28 x
20,480 bf16, hub layout, built by clt_load_attribute.py with thresholds for ~80 active features
per layer and token), TransformerLens backend, ``attribute(batch_size=256,
max_feature_nodes=8192)``. Each side runs in its own process, one after the other:

  upstream: circuit-tracer 0.5.0 as installed (only the Base name added to TL's list),
            QWEN_INTERP not imported
  ours:     import qwen_interp (bounded attribution is the default path)

1. seed prompt (16 tokens, ``batch_size=SEED_BATCH``, default 256): time, peak GPU memory, and
   the graph of each side saved; the driver compares active and selected features, logits,
   and |A_ours - A_upstream| <= 1e-2 * max|A| on the nodes both kept (bf16; reported).
2. LONG_TOKENS-token prompt (default 1,000), ``batch_size=LONG_BATCH`` (default 64): upstream is
   expected to run out of GPU memory (logged), ours to finish.

JSON lines go to $OUT/attribution_bench.jsonl. Run on the GPU machine (benchmarks/README.md):
  PYTHONPATH=/tmp/site python benchmarks/attribution_memory.py              # both parts
  PYTHONPATH=/tmp/site python benchmarks/attribution_memory.py seed|long
  PYTHONPATH=/tmp/site python benchmarks/attribution_memory.py build    # model + CLT only
Each side's record also has its from_pretrained time and GPU peak, and (seed) the L0 per layer
and token: the measurements of clt_load_attribute.py, in the same run.
Smoke test of the script itself on CPU (small offline model, fp32, no timing value):
  python benchmarks/attribution_memory.py --small
Host-memory version on CPU (28 layers, d_model 256, a 28 x 2,048 CLT at ~40 active features per
layer and token, fp32, seed prompt, batch 256, max_feature_nodes 1,024; peak RSS during
attribute(), measured through /proc/self/clear_refs):
  python benchmarks/attribution_memory.py --cpu-mid
The long part at that width, both sides under one host address-space limit (an allocation past
it is logged as out of memory, like CUDA's):
  (ulimit -v 22000000; python benchmarks/attribution_memory.py --cpu-mid long)
The real shapes and dtype (bf16, 28 x 20,480 CLT at L0 ~80, seed prompt) on the host (the
~40 GB build goes to /tmp/cltbench-cpu; minutes per side): at batch 256 for each side's memory,
and at a batch and node budget upstream fits in host memory and time, to compare the graphs:
  python benchmarks/attribution_memory.py --cpu-real
  SEED_BATCH=32 MAX_FEATURE_NODES=512 python benchmarks/attribution_memory.py --cpu-real
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _common import jsonl_logger, use_checkout_plugins

MODES = ("--small", "--cpu-mid", "--cpu-real")
SMALL = "--small" in sys.argv
MID = "--cpu-mid" in sys.argv
REAL_CPU = "--cpu-real" in sys.argv  # the real shapes and bf16, on the host
if MID:
    os.environ.setdefault("CLT_BENCH_DIR", "/tmp/cltbench-mid")
    os.environ.setdefault("TARGET_L0", "40")
if REAL_CPU:
    os.environ.setdefault("CLT_BENCH_DIR", "/tmp/cltbench-cpu")
if not SMALL:
    os.environ.setdefault("TARGET_L0", "80")
    import clt_load_attribute as clt_bench  # sets HF_HOME / offline before any HF import

WORK = Path(os.environ.get("CLT_BENCH_DIR", "/tmp/cltbench"))
MODEL = "Qwen/Qwen3-1.7B-Base"
RELEASE = "bluelightai/clt-qwen3-1.7b-base-20k"
SEED = "Fact: The president of the United States in 2010 was"
LONG_TOKENS = int(os.environ.get("LONG_TOKENS", "1000"))
LONG_BATCH = int(os.environ.get("LONG_BATCH", "64"))
SEED_BATCH = int(os.environ.get("SEED_BATCH", "256"))
MAX_FEATURE_NODES = int(os.environ.get("MAX_FEATURE_NODES", "1024" if MID else "8192"))
MID_MODEL = dict(vocab_size=151936, hidden_size=256, intermediate_size=768, num_hidden_layers=28,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 max_position_embeddings=32768, tie_word_embeddings=True, rope_theta=1e6,
                 rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151643)
GRAPH_RTOL = 1e-2

log = jsonl_logger("attribution_bench.jsonl")


def long_prompt(tokenizer, n_tokens: int) -> list[int]:
    """A deterministic ``n_tokens``-token prompt (position 0 is <|endoftext|>)."""
    text = ("In 2010 the president of the United States was Barack Obama, who had won the 2008 "
            "election against John McCain; before him George W. Bush served two terms. ")
    ids = tokenizer(text * (n_tokens // 20 + 1)).input_ids
    return [151643] + ids[: n_tokens - 1]


def load(side: str, device, dtype):
    if side == "ours":
        use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens",
                             "qwen_interp_circuit_tracer")
    else:
        import transformer_lens.supported_models as sm
        if MODEL not in sm.OFFICIAL_MODEL_NAMES:
            sm.OFFICIAL_MODEL_NAMES.append(MODEL)
    from circuit_tracer import ReplacementModel
    return ReplacementModel.from_pretrained(MODEL, RELEASE, device=device, dtype=dtype)


def measure(side: str, part: str, device: str) -> None:
    import torch
    from circuit_tracer import attribute
    cuda = device == "cuda"
    t0 = time.time()
    rm = load(side, torch.device(device), torch.bfloat16 if cuda or REAL_CPU else torch.float32)
    if cuda:
        torch.cuda.synchronize()
    # The load as clt_load_attribute.py measured it: from_pretrained of model + CLT.
    loaded = dict(load_s=round(time.time() - t0, 2))
    if cuda:
        loaded["load_gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    if part == "seed":
        prompt, batch = SEED, SEED_BATCH
        ids = rm.ensure_tokenized(prompt)
        _, acts = rm.get_activations(ids[None], sparse=True)  # position 0 zeroed: not counted
        loaded["l0_per_layer_token"] = round(acts._nnz() / (rm.cfg.n_layers * (len(ids) - 1)), 1)
        del acts
    else:
        prompt, batch = torch.tensor(long_prompt(rm.tokenizer, LONG_TOKENS)), LONG_BATCH
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before_gb = _status_bytes("VmRSS") / 1e9
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current
    anon = PeakSampler("RssAnon")  # VmHWM also counts mmapped weight files; this does not
    t0 = time.time()
    try:
        with anon:
            g = attribute(prompt, rm, batch_size=batch, max_feature_nodes=MAX_FEATURE_NODES,
                          verbose=True)  # phase timings in the output
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        log(side=side, part=part, oom=True, after_s=round(time.time() - t0, 1),
            error=str(e).splitlines()[0][:200])
        return
    if cuda:
        torch.cuda.synchronize()
    record = dict(side=side, part=part, **loaded, attribute_s=round(time.time() - t0, 2),
                  n_tokens=int(g.input_tokens.shape[0]), batch_size=batch,
                  active_features=int(g.active_features.shape[0]),
                  nodes=int(g.adjacency_matrix.shape[0]),
                  host_rss_before_gb=round(rss_before_gb, 2),
                  host_peak_rss_during_gb=round(_status_bytes("VmHWM") / 1e9, 2),
                  host_anon_before_gb=round(anon.start / 1e9, 2),
                  host_peak_anon_during_gb=round(anon.peak / 1e9, 2))
    if cuda:
        record.update(peak_gpu_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2),
                      peak_gpu_above_model_gb=round(
                          (torch.cuda.max_memory_allocated() - base) / 1e9, 2),
                      model_and_clt_gb=round(base / 1e9, 2))
    log(**record)
    if part == "seed":
        torch.save({k: getattr(g, k) for k in ("active_features", "selected_features",
                                                "adjacency_matrix", "logit_probabilities")}
                   | {"logit_tokens": [t.vocab_idx for t in g.logit_targets]},
                   WORK / f"graph_{side}.pt")


class PeakSampler:
    """Peak of one /proc/self/status field while the ``with`` block runs (sampled every 10 ms)."""

    def __init__(self, field: str) -> None:
        self.field, self.start, self.peak = field, 0, 0

    def __enter__(self):
        import threading
        self.start = self.peak = _status_bytes(self.field)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.wait(0.01):
            self.peak = max(self.peak, _status_bytes(self.field))

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _status_bytes(self.field))


def _out_of_memory(e: Exception) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError when the host refuses an
    allocation (host-memory runs: over ``ulimit -v``, or larger than RAM)."""
    import torch
    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # /proc reports kB
    raise KeyError(field)


def compare_seed_graphs() -> None:
    """Active features, logits, selected features, and the edges among the nodes both graphs
    kept. In bf16 a feature at the edge of the ``max_feature_nodes`` budget can rank on either
    side of it (scores differ in their last bits), so the overlap is reported and edges are
    compared on the common nodes."""
    import torch
    missing = [s for s in ("upstream", "ours") if not (WORK / f"graph_{s}.pt").exists()]
    if missing:  # that side ran out of memory or failed (logged above)
        log(part="seed", compare=False, no_graph_from=missing)
        return
    up, ours = (torch.load(WORK / f"graph_{s}.pt") for s in ("upstream", "ours"))
    A, B = ours["adjacency_matrix"], up["adjacency_matrix"]
    sel_up, sel_ours = up["selected_features"].tolist(), ours["selected_features"].tolist()
    row_up = {f: i for i, f in enumerate(sel_up)}
    common = [(i, row_up[f]) for i, f in enumerate(sel_ours) if f in row_up]
    record = dict(part="seed", compare=True,
                  same_active_features=torch.equal(up["active_features"], ours["active_features"]),
                  same_selected_features=sel_up == sel_ours, selected=len(sel_up),
                  selected_in_both=len(common),
                  same_logits=up["logit_tokens"] == ours["logit_tokens"])
    if A.shape == B.shape and record["same_logits"]:
        rest = list(range(len(sel_up), B.shape[0]))  # error, token and logit nodes
        i_ours = torch.tensor([i for i, _ in common] + rest)
        i_up = torch.tensor([j for _, j in common] + rest)
        a, b = A[i_ours][:, i_ours], B[i_up][:, i_up]
        diff = float((a - b).abs().max() / b.abs().max())
        record.update(common_nodes=len(i_ours), nodes=B.shape[0],
                      max_abs_diff_over_max_abs=diff, within_rtol=diff <= GRAPH_RTOL,
                      frobenius_rel=float((a - b).norm() / b.norm()),
                      edges_present_in_one_only=int(((a != 0) != (b != 0)).sum()),
                      edges=int((b != 0).sum()))
    log(**record)


def run_side(side: str, part: str, device: str) -> None:
    flags = [f for f in MODES if f in sys.argv]
    args = [sys.executable, __file__, "measure", side, part, device] + flags
    (WORK / f"graph_{side}.pt").unlink(missing_ok=True)  # never compare a graph of an older run
    proc = subprocess.run(args)
    if proc.returncode != 0:
        log(side=side, part=part, failed=True, returncode=proc.returncode)


def build_small() -> str:
    """The small offline Qwen3-1.7B-Base + CLT of the test suite, on CPU."""
    import tempfile
    home = Path(tempfile.mkdtemp())
    os.environ.update(HF_HOME=str(home), HF_HUB_OFFLINE="1")
    reg = use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens",
                               "qwen_interp_circuit_tracer")
    from qwen_interp.apps.testing.hub import OfflineHub
    hub = OfflineHub(home)
    hub.model(reg.model(MODEL))
    hub.transcoder(reg.transcoder_release(RELEASE), reg.model(MODEL))
    return str(home)


def main() -> None:
    args = [a for a in sys.argv[1:] if a not in MODES]
    if args[:1] == ["measure"]:
        if SMALL:
            os.environ["HF_HUB_OFFLINE"] = "1"
        measure(*args[1:4])
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if SMALL:
        os.environ["HF_HOME"] = build_small()
        device = "cpu"
    elif MID:
        clt_bench.build("cpu", MID_MODEL, "float32", n_latent=2048)
        device = "cpu"
    elif REAL_CPU:
        clt_bench.build("cpu")
        device = "cpu"
    else:
        clt_bench.build()
        device = "cuda"
    parts = args or (["seed"] if MID or REAL_CPU else ["seed", "long"])
    if parts == ["build"]:  # model and CLT only (the GPU suite times the build on its own)
        return
    for part in parts:
        for side in ("upstream", "ours"):
            run_side(side, part, device)
        if part == "seed":
            compare_seed_graphs()


if __name__ == "__main__":
    main()
