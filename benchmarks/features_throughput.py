"""Benchmark (not a test): the feature-statistics pass (``qwen-interp features compute``) side by
side with what it replaces, on the same model, batch and contexts, in one run.

  bare:   ``Session.run(tokens, logits=False)`` per batch: the shared model with a CLT and an SAE
          on every layer, every dictionary encoded, no statistics (the ceiling);
  stats:  ``collect.shard_stats(session, contexts, 0, config)``: the statistics pass itself
          (goal: >= 0.8 x bare);
  naive:  the per-tool loop users write today, per batch: TransformerLens ``run_with_cache``
          (a plain HookedTransformer, resid_post of every layer, no unembedding), SAELens
          ``sae.encode`` per layer, circuit-tracer ``ReplacementModel.get_activations`` per
          context (three separately loaded copies of the model), then count, sum, max and top-k
          per feature in torch (``torch.topk`` over the running top-k and the batch). It keeps
          less than ``stats`` (no histogram, random sample, windows or co-activations);
  memory: peak RSS of ``job.compute`` in process over a 1x and a 10x corpus, each in a fresh
          subprocess of this script (``--memory-run SCALE``; goal: flat);
  ray:    ``job.compute(..., ray_address="local", ray_workers=W)`` for W = 1, 2 and in process,
          torch at 1 thread everywhere (goal: 2 vs 1 >= 1.7x on CPU).

Ray timing: Ray is started here before the runs, so its start-up is not counted; each run's
actors still load the model. The shard phase is timed with job.compute's own progress updates
(its bar is swapped for a recorder: per shard result on Ray, per batch in process), from the
update that completes the first W shards (every actor loaded and through one shard) to the last;
the rate is the tokens in between over that time. The in-process baseline is timed the same way
(from the end of its first shard). The driver's merging is part of that phase, as in a real run;
loading, the final checkpoint and the tables/sidecar are not.

Modes:

  python benchmarks/features_throughput.py --small   # default: CPU, the tests' offline stand-in
      (Qwen3-1.7B-Base flags, 3 layers, d_model 64, real vocabulary) from a private offline HF
      cache in a temporary folder, a CLT (--clt-width per layer) and Qwen-Scope-format SAEs
      (--sae-width, top --sae-k) on every layer, fp32, a deterministic random-word corpus.
  python benchmarks/features_throughput.py --real    # GPU machine: Qwen3-1.7B-Base shapes, random
      bf16 weights built on the device, CLT 28 x 20,480 (L0 ~ 115) and 28 x 32,768 top-50 SAEs
      in memory, random tokens. bare/stats/naive and the GPU peak of shard_stats over 1x and 10x
      the contexts; no Ray, no corpus. Not run yet (written on a machine without a GPU).

One JSON line per measurement (date, commit, machine, torch, mode, command) goes to
$OUT/features_throughput.jsonl when OUT is set, else benchmarks/results/features_throughput.jsonl
(git-ignored, appended); a Markdown table with the ratios is printed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "Qwen/Qwen3-1.7B-Base"
TRANSCODER = "bluelight-qwen3-1.7b"
WORK_ENV = "FEATURES_BENCH_DIR"
# The random-word corpus of tests/test_features_stats.py.
WORDS = ("the cat sat on a warm mat while rain fell over quiet hills and an old dog slept by "
         "the door because winter had come early to the small town of Alder").split()
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1"}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--small", action="store_true", help="CPU, offline stand-in (default)")
    mode.add_argument("--real", action="store_true", help="GPU, Qwen3-1.7B-Base shapes")
    ap.add_argument("--clt-width", type=int, default=None, help="CLT features per layer "
                    "(small: 512; real: 20480)")
    ap.add_argument("--sae-width", type=int, default=None, help="SAE width (small: 1024; real: "
                    "32768)")
    ap.add_argument("--sae-k", type=int, default=None, help="SAE top-k (small: 16; real: 50)")
    ap.add_argument("--clt-fire-rate", type=float, default=0.01,
                    help="small: CLT thresholds calibrated to this fraction firing")
    ap.add_argument("--ctx-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--contexts", type=int, default=None, help="contexts timed per side in "
                    "bare/stats/naive, whole batches (small: 128; real: 64)")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds of bare/stats/naive, "
                    "interleaved; the best of each side is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU) for "
                    "bare/stats/naive and the memory runs; the Ray part always uses 1")
    ap.add_argument("--corpus-contexts", type=int, default=32,
                    help="contexts of the 1x corpus (memory: 1x and 10x)")
    ap.add_argument("--ray-contexts", type=int, default=320,
                    help="contexts of the Ray part (taken from the 10x corpus)")
    ap.add_argument("--shard-batches", type=int, default=None, help="batches per shard "
                    "(small: 4; real: 8)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                    "naive, memory, ray")
    ap.add_argument("--workdir", default=None, help="work folder (default: a temporary one, "
                    "removed at the end)")
    ap.add_argument("--memory-run", type=int, default=None, metavar="SCALE",
                    help="internal: one memory measurement over the SCALE x corpus")
    args = ap.parse_args(argv)
    defaults = (20480, 32768, 50, 64, 8) if args.real else (512, 1024, 16, 128, 4)
    names = ("clt_width", "sae_width", "sae_k", "contexts", "shard_batches")
    for name, value in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.contexts < args.batch or args.contexts % args.batch:
        ap.error(f"--contexts must be a positive multiple of --batch ({args.batch}), got "
                 f"{args.contexts}")
    args.skip = {part for part in args.skip.split(",") if part}
    unknown = args.skip - {"naive", "memory", "ray"}
    if unknown:
        ap.error(f"--skip: unknown parts {sorted(unknown)}; known: naive, memory, ray")
    return args


def offline_environment(work: Path) -> None:
    """A private offline HF cache; set before anything imports huggingface_hub (it reads the
    paths at import)."""
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("huggingface_hub was imported before the offline cache was set")
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        os.environ.pop(key, None)
    os.environ.update(OFFLINE_ENV, HF_HOME=str(work / "hf"), **{WORK_ENV: str(work)})
    os.environ.setdefault("QWEN_INTERP_CACHE", str(work / "qwen-interp-cache"))


# --- run record -----------------------------------------------------------------------------
def git_commit() -> str:
    """The suite's own record of the commit (HEAD, or what --prepare recorded on a GPU machine
    that gets the working tree without .git)."""
    sys.path.insert(0, str(HERE))
    from gpu_suite import git_commit as suite_commit
    return suite_commit()


def environment() -> dict:
    import torch
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                   .splitlines() if line.startswith("MemTotal:")), 0)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                commit=git_commit(),
                machine=f"{platform.machine()}, {cores} CPUs, {mem_kb / 2**20:.0f} GiB RAM, "
                        f"Python {platform.python_version()}",
                gpu=gpu, torch=torch.__version__, command=" ".join([sys.executable, *sys.argv]))


class Log:
    """Prints each measurement and appends it, with the run's record, as one JSON line."""

    def __init__(self, record: dict) -> None:
        out = os.environ.get("OUT")
        self.path = (Path(out) if out else HERE / "results") / "features_throughput.jsonl"
        self.record = record

    def __call__(self, **fields) -> None:
        print(json.dumps(fields), flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({**self.record, **fields}) + "\n")


# --- the small setup: the tests' offline stand-in ----------------------------------------------
def small_dictionaries(args, work: Path):
    """Build (once per work folder) the stand-in model, CLT and SAE snapshots in the offline
    cache and register the SAE release in this process; returns (release, n_layers)."""
    import qwen_interp
    from qwen_interp.apps.testing.hub import OfflineHub, small_config
    from qwen_interp.apps.testing.sae_hub import (SAEReleasePlugin, qwen_scope_snapshot,
                                                  tiny_release)
    registry = qwen_interp.registry()
    spec = registry.model(MODEL)
    n_layers = small_config(spec).num_hidden_layers
    hub = OfflineHub(work / "hf")
    hub.transcoder(registry.transcoder_release(TRANSCODER), spec, d_latent=args.clt_width,
                   target_fire_rate=args.clt_fire_rate)
    release = tiny_release(spec, d_sae=args.sae_width, k=args.sae_k, n_layers=n_layers)
    qwen_scope_snapshot(hub, release, range(n_layers))
    qwen_interp.register_plugin(SAEReleasePlugin([release]))
    return release, n_layers


def run_config(args, release, n_layers: int, corpus: Path, **changes):
    from qwen_interp.apps.features.collect import RunConfig
    config = RunConfig(model=MODEL, transcoder=TRANSCODER, corpus=str(corpus),
                       saes=tuple((release.release, n) for n in range(n_layers)),
                       ctx_len=args.ctx_len, batch_size=args.batch,
                       shard_batches=args.shard_batches, dtype="float32")
    return replace(config, **changes)


def write_corpora(work: Path, tokenizer, contexts_1x: int, ctx_len: int) -> dict[int, Path]:
    """``corpus-1x.txt`` and ``corpus-10x.txt``: random-word documents (seed 0), the 1x corpus
    the first documents of the 10x one, each about ``scale * contexts_1x`` contexts long."""
    import numpy as np
    rng = np.random.default_rng(0)
    paths, lines, tokens = {}, [], 0
    for scale in (1, 10):
        target = scale * contexts_1x * ctx_len + ctx_len
        while tokens < target:
            line = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))).capitalize() + "."
            lines.append(line)
            tokens += len(tokenizer(line, add_special_tokens=False)["input_ids"]) + 1
        paths[scale] = work / f"corpus-{scale}x.txt"
        paths[scale].write_text("\n".join(lines) + "\n")
    return paths


def first_contexts(session, config, n: int):
    import numpy as np

    from qwen_interp.apps.features import collect
    from qwen_interp.apps.features.corpus import CorpusReport
    tok = session.model.tokenizer
    items = collect.shards(replace(config, max_contexts=n), tok, collect.first_token_id(tok),
                           CorpusReport(sources=[]))
    contexts = np.concatenate([c for _, _, c in items])
    if len(contexts) < n:
        raise ValueError(f"{config.corpus} gave {len(contexts)} contexts, {n} needed")
    return contexts


def small_naive_tools(release, n_layers: int):
    """What a user loads for the per-tool loop: three models, each by name."""
    import torch
    from circuit_tracer import ReplacementModel
    from sae_lens import SAE
    from transformer_lens import HookedTransformer
    tl = HookedTransformer.from_pretrained(MODEL, device="cpu", fold_ln=False,
                                           center_writing_weights=False, center_unembed=False)
    saes = {n: SAE.from_pretrained(release.release, f"layer{n}", device="cpu")
            for n in range(n_layers)}
    ct = ReplacementModel.from_pretrained(MODEL, TRANSCODER, device=torch.device("cpu"))
    return tl, saes, ct


# --- the real setup (GPU): Qwen3-1.7B-Base shapes, random weights, dictionaries in memory ----
def real_session(args, work: Path, device: str):
    """The shared model from a random bf16 snapshot, a CLT encoder and SAEs built in memory
    (as shared_session.py does); CLT thresholds calibrated on the model's own MLP inputs.
    ``FEATURES_BENCH_REAL_TINY=1``: the same code at _common.small_qwen3's shapes (a CPU smoke
    check of this path; its numbers mean nothing)."""
    import torch
    from _common import (QWEN3_1_7B_BASE, import_sae_lens, random_qwen3_snapshot, small_qwen3,
                         use_checkout_plugins)
    import_sae_lens()
    registry = use_checkout_plugins("qwen_interp_qwen3", "qwen_interp_transformerlens",
                                    "qwen_interp_circuit_tracer", "qwen_interp_saelens")
    from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder

    from qwen_interp.apps.session import Session, shared_model_class
    tiny = os.environ.get("FEATURES_BENCH_REAL_TINY") == "1"
    shape = small_qwen3() if tiny else QWEN3_1_7B_BASE
    dtype = torch.float32 if tiny else torch.bfloat16
    random_qwen3_snapshot(work / "hf", MODEL, shape, "float32" if tiny else "bfloat16")
    n_layers, d_model = shape["num_hidden_layers"], shape["hidden_size"]
    clt = CrossLayerTranscoder(n_layers, args.clt_width, d_model, activation_function="jump_relu",
                               lazy_decoder=True, feature_input_hook="mlp.hook_in",
                               feature_output_hook="mlp.hook_out", device=torch.device(device),
                               dtype=dtype, clt_path=None)
    model = shared_model_class(True).from_pretrained_and_transcoders(
        MODEL, clt, device=torch.device(device), dtype=dtype)
    session = Session(model)
    calibrate_clt(model, clt, n_layers, d_model, args.clt_width, device, dtype)
    for sae in real_saes(registry, args, n_layers, d_model, device):
        session.add_sae(sae)
    return session, clt, n_layers, dtype


def calibrate_clt(model, clt, n_layers, d_model, width, device, dtype, target_l0=115.0) -> None:
    import torch
    g = torch.Generator(device=device).manual_seed(1)
    tokens = torch.randint(0, 150000, (1, 128), device=device, generator=g)
    tokens[:, 0] = 151643
    mlp_in = {}
    hooks = [(f"blocks.{n}.mlp.hook_in",
              lambda a, hook, n=n: mlp_in.__setitem__(n, a[0, 1:].float()))
             for n in range(n_layers)]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=n_layers)
        for n in range(n_layers):
            x = mlp_in[n]
            w = torch.randn(width, d_model, device=device, generator=g) / d_model ** 0.5
            w = w / x.norm(dim=-1).mean()
            threshold = torch.quantile((x @ w.T).flatten()[:10_000_000], 1 - target_l0 / width)
            clt.W_enc[n] = w.to(dtype)
            clt.b_enc[n] = 0
            clt.activation_function.threshold[n] = threshold.clamp_min(1e-3).to(dtype)


def real_saes(registry, args, n_layers: int, d_model: int, device: str):
    """Qwen-Scope-format SAEs (fp32, top-k) built from the release's config, random weights."""
    import torch
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting

    from qwen_interp.specs import SAERelease
    from qwen_interp_saelens.loader import sae_config
    release = SAERelease(release="bench-features", repo_id="bench/features-sae",
                         model_repo_id=MODEL, d_model=d_model, d_sae=args.sae_width,
                         k=args.sae_k, n_layers=n_layers)
    g = torch.Generator(device=device).manual_seed(2)
    saes = []
    for layer in range(n_layers):
        sae = SAE.from_dict(handle_config_defaulting(sae_config(registry, release, layer,
                                                                device=device)))
        with torch.no_grad():
            sae.W_dec.copy_(torch.randn(sae.W_dec.shape, device=device, generator=g)
                            / d_model ** 0.5)
            sae.W_enc.copy_(sae.W_dec.T)
            sae.b_enc.zero_()
            sae.b_dec.zero_()
        saes.append(sae)
    return saes


# --- the three sides --------------------------------------------------------------------------
def sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bare_pass(session, contexts, batch: int) -> None:
    import torch
    device = session.model.cfg.device
    for start in range(0, len(contexts), batch):
        tokens = torch.as_tensor(contexts[start:start + batch], dtype=torch.long, device=device)
        session.run(tokens, logits=False)
    sync(device)


def stats_pass(session, contexts, config, batch_times: list | None = None):
    """The statistics pass over ``contexts`` as ``job.compute`` runs it in process: shard after
    shard (``config.shard_contexts``), each with the floors of the total so far, merged on the
    device in shard order. ``batch_times`` gets the time after each batch (the steady state
    leaves out the first shard, whose examples all start empty)."""
    from qwen_interp.apps.features import accumulators, collect
    device = session.model.cfg.device

    def on_batch(_tokens: int) -> None:
        if batch_times is not None:
            sync(device)
            batch_times.append(time.perf_counter())
    total = None
    for first in range(0, len(contexts), config.shard_contexts):
        floors = None if total is None else {
            name: accumulators.floors(block) for name, block in total.items()}
        shard = collect.shard_stats(session, contexts[first:first + config.shard_contexts],
                                    first, config, on_batch=on_batch, to_cpu=False,
                                    floors=floors)
        total = collect.merge_into(total, shard)
    sync(device)
    return total


class NaiveStats:
    """Count, sum, max and top-k (value, global token index) per feature, the plain way."""

    def __init__(self, width: int, k: int, ctx_len: int, device) -> None:
        import torch
        self.k, self.ctx_len = k, ctx_len
        self.count = torch.zeros(width, dtype=torch.int64, device=device)
        self.sum = torch.zeros(width, dtype=torch.float64, device=device)
        self.max = torch.zeros(width, device=device)
        self.top_values = torch.full((k, width), -float("inf"), device=device)
        self.top_index = torch.full((k, width), -1, dtype=torch.int64, device=device)

    def update(self, acts, first_context: int) -> None:
        import torch
        acts = acts.float()
        batch, ctx_len, width = acts.shape
        flat = acts[:, 1:].reshape(-1, width)  # position 0 (the special token) left out
        ctx = torch.arange(batch, device=acts.device).repeat_interleave(ctx_len - 1)
        pos = torch.arange(1, ctx_len, device=acts.device).repeat(batch)
        gidx = (ctx + first_context) * ctx_len + pos
        self.count += (flat > 0).sum(0)
        self.sum += flat.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, flat.max(0).values)
        values = torch.cat([self.top_values, flat])
        index = torch.cat([self.top_index, gidx.unsqueeze(1).expand(-1, width)])
        top = values.topk(self.k, dim=0)
        self.top_values, self.top_index = top.values, index.gather(0, top.indices)


def naive_pass(tools, contexts, batch: int, n_layers: int, k: int, widths: dict[str, int]):
    import torch
    tl, saes, ct = tools
    device = tl.cfg.device
    ctx_len = contexts.shape[1]
    stats = {name: NaiveStats(width, k, ctx_len, device) for name, width in widths.items()}
    resid = {f"blocks.{n}.hook_resid_post" for n in saes}
    for start in range(0, len(contexts), batch):
        tokens = torch.as_tensor(contexts[start:start + batch], dtype=torch.long, device=device)
        with torch.no_grad():
            _, cache = tl.run_with_cache(tokens, names_filter=lambda name: name in resid,
                                         return_type=None)
            for n, sae in saes.items():
                sae_acts = sae.encode(cache[f"blocks.{n}.hook_resid_post"].to(sae.dtype))
                stats[f"sae/{n}"].update(sae_acts, start)
            del cache
            # get_activations is written for one prompt (it zeroes position 0 of dim 1)
            clt = torch.stack([ct.get_activations(row)[1] for row in tokens], dim=1)
            for n in range(n_layers):
                stats[f"clt/{n}"].update(clt[n], start)
            del clt
    sync(device)
    return stats


def agreement(stats, naive) -> dict:
    """Naive vs our statistics on the same contexts: firing counts and max per feature."""
    out = {}
    for name, ours in stats.items():
        theirs = naive[name]
        count = ours.count.cpu()
        out[name] = dict(count_mismatches=int((count != theirs.count.cpu()).sum()),
                         features=int(count.numel()),
                         max_abs_diff=float((ours.max.cpu() - theirs.max.cpu()).abs().max()),
                         mean_l0=round(float(count.sum()) / max(1, int(ours.n_tokens)), 2))
    return out


def throughput(args, session, config, contexts, tools, n_layers: int, log) -> dict:
    """Interleaved rounds of bare, stats and naive over the same contexts; best of each."""
    from qwen_interp.apps.features import collect
    widths = collect.blocks(session)
    tokens = contexts.size
    warm = contexts[:args.batch]
    bare_pass(session, warm, args.batch)
    stats_pass(session, warm, config)
    if tools is not None:
        naive_pass(tools, warm, args.batch, n_layers, config.stats.top_k, widths)
    best: dict[str, float] = {}
    steady: list[float] = []
    stats = naive = None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        bare_pass(session, contexts, args.batch)
        best["bare"] = min(best.get("bare", 1e30), time.perf_counter() - t0)
        times: list[float] = []
        t0 = time.perf_counter()
        stats = stats_pass(session, contexts, config, times)
        best["stats"] = min(best.get("stats", 1e30), time.perf_counter() - t0)
        first_shard = config.shard_batches
        if len(times) > first_shard:  # after the first shard: the steady state
            steady.append((len(times) - first_shard) * args.batch * contexts.shape[1]
                          / (times[-1] - times[first_shard - 1]))
        if tools is not None:
            t0 = time.perf_counter()
            naive = naive_pass(tools, contexts, args.batch, n_layers, config.stats.top_k, widths)
            best["naive"] = min(best.get("naive", 1e30), time.perf_counter() - t0)
    rates = {side: tokens / seconds for side, seconds in best.items()}
    for side, rate in rates.items():
        log(part="throughput", side=side, tok_s=round(rate, 1), seconds=round(best[side], 3),
            tokens=int(tokens), batch=args.batch, ctx_len=args.ctx_len, repeats=args.repeats)
    if steady:
        rates["stats_steady"] = max(steady)
        log(part="throughput", side="stats_steady", tok_s=round(max(steady), 1),
            note="after the first shard (whose examples start empty)")
    if naive is not None and stats is not None:
        log(part="agreement", naive_vs_stats=agreement(stats, naive))
    return rates


# --- memory: job.compute in a fresh process per corpus size -------------------------------------
def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler(threading.Thread):
    """RSS every 10 ms with its wall-clock time, so a phase's peak can be read afterwards."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE")

    def run(self) -> None:
        while not self.done.wait(0.01):
            rss = int(Path("/proc/self/statm").read_text().split()[1]) * self.page
            self.samples.append((time.time(), rss))

    def peak_until(self, t: float) -> int:
        return max((rss for when, rss in self.samples if when <= t), default=0)


def memory_child(args, work: Path) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from qwen_interp.apps.features import collect, job
    release, n_layers = small_dictionaries(args, work)
    scale = args.memory_run
    config = run_config(args, release, n_layers, work / f"corpus-{scale}x.txt")
    out = work / f"memory-{scale}x"
    gc.collect()
    try:  # reset the peak (VmHWM) to the current RSS: the peak is the job's
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss0 = status_kb("VmRSS")
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    result = job.compute(config, out, device="cpu", progress=False)
    seconds = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    # job.compute checkpoints after the last shard, before writing the tables and sidecar
    shard_end = (out / collect.CHECKPOINT).stat().st_mtime
    print(json.dumps(dict(scale=scale, contexts=result.contexts, tokens=result.tokens,
                          shards=result.shards, seconds=round(seconds, 2),
                          rss_before_mb=round(rss0 / 1024, 1),
                          peak_rss_mb=round(status_kb("VmHWM") / 1024, 1),
                          peak_rss_shards_mb=round(sampler.peak_until(shard_end) / 2**20, 1))))


def memory(args, work: Path, log) -> dict:
    rows = {}
    for scale in (1, 10):
        cmd = [sys.executable, __file__, "--small", "--memory-run", str(scale),
               "--workdir", str(work), "--clt-width", str(args.clt_width),
               "--sae-width", str(args.sae_width), "--sae-k", str(args.sae_k),
               "--clt-fire-rate", str(args.clt_fire_rate), "--ctx-len", str(args.ctx_len),
               "--batch", str(args.batch), "--shard-batches", str(args.shard_batches),
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            raise RuntimeError(f"memory run {scale}x failed:\n{done.stderr[-3000:]}")
        rows[scale] = json.loads(done.stdout.strip().splitlines()[-1])
        log(part="memory", **rows[scale], threads=args.threads)
    return rows


def gpu_memory(args, session, config, contexts_1x, log) -> dict:
    """--real: peak GPU memory of shard_stats over 1x and 10x the contexts (random tokens)."""
    import numpy as np
    import torch
    rows = {}
    for scale in (1, 10):
        contexts = np.concatenate([contexts_1x] * scale)
        gc.collect()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        stats_pass(session, contexts, config)
        rows[scale] = dict(scale=scale, contexts=len(contexts),
                           seconds=round(time.perf_counter() - t0, 2),
                           peak_gpu_mb_above_loaded=round(
                               (torch.cuda.max_memory_allocated() - base) / 2**20, 1))
        log(part="memory", device="cuda", **rows[scale])
    return rows


# --- Ray: shard phase timed from job.compute's own progress updates -------------------------
class TimingBar:
    """Stands in for job.compute's progress bar (the same calls: update, refresh, close, total,
    n) and records (time, tokens done) at each update: per batch in process, per shard result
    on Ray."""

    def __init__(self) -> None:
        self.total = self.n = 0
        self.events: list[tuple[float, int]] = []

    def update(self, n: int = 1) -> None:
        self.n += n
        self.events.append((time.perf_counter(), self.n))

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def timed_compute(config, out: Path, first_round: int, **kwargs) -> dict:
    """``job.compute`` with its progress bar swapped for a TimingBar (``job._progress`` is
    restored after); the shard phase runs from the update that completes the first
    ``first_round`` shards to the last update."""
    from qwen_interp.apps.features import job
    bar = TimingBar()
    original = job._progress
    job._progress = lambda enabled, config, done_contexts: bar
    t0 = time.perf_counter()
    try:
        result = job.compute(config, out, progress=True, **kwargs)
    finally:
        job._progress = original
    total = time.perf_counter() - t0
    shard_tokens = config.shard_contexts * config.ctx_len
    start = next(((t, n) for t, n in bar.events if n >= first_round * shard_tokens), None)
    row = dict(contexts=result.contexts, shards=result.shards, total_s=round(total, 2))
    if start is None or not bar.events or bar.events[-1][1] <= start[1]:
        return {**row, "tok_s": None, "note": "too few shards to time a phase"}
    end = bar.events[-1]
    seconds = end[0] - start[0]
    return {**row, "timed_shards": (end[1] - start[1]) / shard_tokens, "timed_s": round(seconds, 2),
            "to_first_round_s": round(start[0] - t0, 2),
            "tok_s": round((end[1] - start[1]) / seconds, 1)}


def ray_part(args, work: Path, session, config, log) -> dict:
    import ray
    import torch

    from qwen_interp.apps.features.ray_backend import PASSED_PREFIXES
    torch.set_num_threads(1)  # the baseline runs as each Ray worker does
    config = replace(config, corpus=str(work / "corpus-10x.txt"),
                     max_contexts=args.ray_contexts)
    rows = {"in-process": timed_compute(config, work / "ray-0", 1, session=session)}
    log(part="ray", side="in-process", threads=1, **rows["in-process"])
    env = {key: value for key, value in os.environ.items()
           if key.startswith(PASSED_PREFIXES)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env})
    try:
        for workers in (1, 2):
            rows[workers] = timed_compute(config, work / f"ray-{workers}", workers,
                                          session=session, ray_address="local",
                                          ray_workers=workers)
            log(part="ray", side=f"{workers} workers", threads=1, **rows[workers])
    finally:
        ray.shutdown()
    torch.set_num_threads(args.threads)
    return rows


# --- table ------------------------------------------------------------------------------------
def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table(rates: dict, mem: dict | None, ray_rows: dict | None, real: bool) -> str:
    lines = ["| part | measure | value | ratio | goal |", "|---|---|---|---|---|"]

    def row(*cells) -> None:
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    bare, stats, naive = rates.get("bare"), rates.get("stats"), rates.get("naive")
    row("bare", "tokens/s (Session.run, CLT + SAE every layer)", f"{bare:,.0f}", "", "")
    row("stats", "tokens/s (shard_stats)", f"{stats:,.0f}", f"{ratio(stats, bare)} of bare",
        ">= 0.8x")
    if "stats_steady" in rates:
        row("stats", "tokens/s after the first shard", f"{rates['stats_steady']:,.0f}",
            f"{ratio(rates['stats_steady'], bare)} of bare", "")
    if naive:
        row("naive", "tokens/s (TL + SAELens + circuit-tracer + torch stats)", f"{naive:,.0f}",
            f"stats {ratio(stats, naive)} faster", "")
    if mem:
        key = "peak_gpu_mb_above_loaded" if real else "peak_rss_mb"
        label = "peak GPU MB above loaded (shard_stats)" if real else "peak RSS MB (job.compute)"
        for scale in (1, 10):
            m = mem[scale]
            row("memory", f"{scale}x corpus ({m['contexts']} contexts): {label}", m[key],
                ratio(m[key], mem[1][key]) + " of 1x" if scale == 10 else "",
                "flat" if scale == 10 else "")
        if not real:
            for scale in (1, 10):
                m = mem[scale]
                row("memory", f"{scale}x: peak RSS MB during the shards", m["peak_rss_shards_mb"],
                    ratio(m["peak_rss_shards_mb"], mem[1]["peak_rss_shards_mb"]) + " of 1x"
                    if scale == 10 else "", "")
    if ray_rows:
        for side in ("in-process", 1, 2):
            r = ray_rows[side]
            name = "in process, 1 thread" if side == "in-process" else f"Ray, {side} worker(s)"
            note = ""
            if side == 2:
                note = f"{ratio(r['tok_s'], ray_rows[1]['tok_s'])} of 1 worker"
            elif side == 1:
                note = f"{ratio(r['tok_s'], ray_rows['in-process']['tok_s'])} of in process"
            row("ray", f"{name}: shard-phase tokens/s ({r.get('timed_shards', 0):g} shards "
                f"timed, run {r['total_s']} s)", r["tok_s"], note, ">= 1.7x" if side == 2 else "")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------
def main() -> None:
    args = parse_args()
    own_work = args.workdir is None and args.memory_run is None
    work = Path(args.workdir or os.environ.get(WORK_ENV) or tempfile.mkdtemp(
        prefix="features-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    offline_environment(work)
    sys.path.insert(0, str(HERE))  # _common (real mode)
    if args.memory_run is not None:
        memory_child(args, work)
        return
    try:
        run(args, work)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    import torch
    started = time.perf_counter()
    device = "cuda" if args.real else "cpu"
    if args.real and not torch.cuda.is_available() and os.environ.get(
            "FEATURES_BENCH_REAL_TINY") != "1":
        sys.exit("--real needs a GPU (the CPU numbers are --small's)")
    if args.real and not torch.cuda.is_available():
        device = "cpu"
    torch.set_num_threads(args.threads)
    mode = "real" if args.real else "small"
    log = Log({**environment(), "mode": mode, "threads": args.threads})
    t0 = time.perf_counter()
    if args.real:
        import numpy as np
        session, clt, n_layers, dtype = real_session(args, work, device)  # puts src/ on the path
        from qwen_interp.apps.features.collect import RunConfig
        config = RunConfig(model=MODEL, transcoder="in memory", corpus="random tokens",
                           ctx_len=args.ctx_len, batch_size=args.batch,
                           shard_batches=args.shard_batches, dtype=str(dtype).split(".")[-1])
        g = np.random.default_rng(3)
        contexts = g.integers(0, 150000, (args.contexts, args.ctx_len))
        contexts[:, 0] = 151643
    else:
        from qwen_interp.apps.features import collect
        release, n_layers = small_dictionaries(args, work)
        from transformers import AutoTokenizer
        paths = write_corpora(work, AutoTokenizer.from_pretrained(MODEL), args.corpus_contexts,
                              args.ctx_len)
        config = run_config(args, release, n_layers, paths[10])  # enough contexts to time
        session = collect.load_session(config, device="cpu")
        contexts = first_contexts(session, config, args.contexts)
    log(part="setup", seconds=round(time.perf_counter() - t0, 1), n_layers=n_layers,
        clt_width=args.clt_width, sae_width=args.sae_width, sae_k=args.sae_k,
        d_model=session.model.cfg.d_model, batch=args.batch, ctx_len=args.ctx_len,
        contexts=len(contexts), device=device)

    tools = None
    if "naive" not in args.skip:
        t0 = time.perf_counter()
        if args.real:
            from circuit_tracer.replacement_model.replacement_model_transformerlens import (
                TransformerLensReplacementModel)
            from transformer_lens import HookedTransformer
            kw = dict(fold_ln=False, center_writing_weights=False, center_unembed=False)
            tl = HookedTransformer.from_pretrained(MODEL, device=device, dtype=dtype, **kw)
            ct = TransformerLensReplacementModel.from_pretrained_and_transcoders(
                MODEL, clt, device=torch.device(device), dtype=dtype)
            tools = (tl, dict(session.saes), ct)
        else:
            tools = small_naive_tools(release, n_layers)
        log(part="naive_load", seconds=round(time.perf_counter() - t0, 1),
            note="three copies of the model: TL, SAELens SAEs, circuit-tracer")
    rates = throughput(args, session, config, contexts, tools, n_layers, log)
    del tools
    gc.collect()

    mem = ray_rows = None
    if "memory" not in args.skip:
        mem = gpu_memory(args, session, config, contexts, log) if args.real and \
            device == "cuda" else (None if args.real else memory(args, work, log))
    if "ray" not in args.skip and not args.real:
        ray_rows = ray_part(args, work, session, config, log)
    text = table(rates, mem, ray_rows, args.real)
    wall = time.perf_counter() - started
    log(part="summary", wall_s=round(wall, 1), table=text)
    print(f"\n{mode} mode, {args.threads} torch thread(s) (Ray part: 1 per worker), "
          f"wall {wall:.0f} s\n\n{text}")


if __name__ == "__main__":
    main()
