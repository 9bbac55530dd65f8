"""The benchmark suite: every benchmark of this folder, qwen-interp ("ours") against the upstream
tools ("upstream"), one summary table and one JSON line per measurement.

  bash benchmarks/gpu_suite.sh --prepare   # here: the wheels the GPU machine lacks (.whl/gpu_suite)
  bash benchmarks/gpu_suite.sh             # on the GPU machine: real shapes, random weights
  bash benchmarks/gpu_suite.sh --smoke     # CPU, tiny shapes, the project's venv (CI)

The shell script installs the carried wheels and runs this file. Each step runs one script of
this folder in its own process group under a time budget: a step expected to take longer than
the time left in the call is skipped, a step that runs past its budget or the call's deadline is
killed, and either is recorded with its reason. Steps run in priority order (the claims never
measured on a GPU first). The per-script JSON lines go to the work folder; this file turns
them into rows

  {benchmark, metric, unit, ours, upstream, ratio, better, [check], date, commit, machine, gpu,
   torch, command, mode, run}

written to $OUT/gpu_suite.jsonl when OUT is set, else to benchmarks/results/gpu_suite.jsonl
(appended), with the raw lines (gpu_suite_raw.jsonl), the steps' output (gpu_suite.log) and the
table as Markdown (gpu_suite_table.md) beside it. ``ratio`` is how many times better ours is:
upstream / ours for times and memory, ours / upstream for throughput. Rows with a ``check`` are
agreements ours and upstream must meet (same graph, same logits...); the exit status is 1 when
a check fails or a step crashes (in --smoke also when a step runs past its budget).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLT_DISK_GB = 45  # the 28 x 20,480 bf16 CLT (36 GB on disk) and the model (3.4 GB)

# Tolerances of the agreement checks. smoke: fp32 on the CPU, where both paths compute the
# same thing; gpu: bf16, where summation order differs (values are in benchmarks/README.md).
TOL = {
    "smoke": dict(forward_logprob=1e-4, load_logprob_default=1e-5, graph_rel=1e-4,
                  selected_fraction=1.0, session_logprob=1e-4, session_clt_rel=1e-5,
                  session_sae_jaccard=0.999),
    "gpu": dict(forward_logprob=None, load_logprob_default=0.05, graph_rel=1e-2,
                selected_fraction=0.99, session_logprob=1e-2, session_clt_rel=1e-2,
                session_sae_jaccard=0.9),
}


@dataclass
class Step:
    name: str
    script: str
    args: list[str]
    budget_s: int  # killed past it
    raw: str  # the JSON-lines file the script writes under $OUT
    env: dict[str, str] = field(default_factory=dict)
    expect_s: int = 0  # what it should take; skipped when less is left in the call
    needs: str | None = None  # a step that must have succeeded first
    opt_in: bool = False  # runs only when named with --only
    disk_gb: int = 0  # free space the work folder needs


def gpu_steps(work: Path) -> list[Step]:
    # One work folder: the model snapshot is built once (by the first step) and reused.
    # Expected times are the H100 run's (benchmarks/README.md) plus process start-up; budgets
    # leave about 1.5x that before a step is killed.
    shared = {k: str(work) for k in ("FWD_BENCH_DIR", "LOAD_BENCH_DIR", "CLT_BENCH_DIR",
                                     "SESSION_BENCH_DIR")}
    return [
        Step("forward", "forward_throughput.py", [], 90, "forward_throughput.jsonl",
             dict(shared, FWD_SIDES="hf_eager,tl_upstream,tl_ours"), expect_s=60),
        Step("model_load", "model_load.py", [], 90, "model_load.jsonl", shared, expect_s=60),
        Step("clt_build", "attribution_memory.py", ["build"], 180, "attribution_bench.jsonl",
             shared, expect_s=100, disk_gb=CLT_DISK_GB),
        Step("attribution", "attribution_memory.py", ["seed"], 180, "attribution_bench.jsonl",
             shared, expect_s=120, needs="clt_build"),
        Step("shared_session", "shared_session.py", [], 120, "shared_session.jsonl", shared,
             expect_s=70),
        Step("sae_cache_load", "sae_cache_load.py",
             ["--repeats", "2", "--workdir", str(work / "sae")], 60, "sae_cache_load.jsonl",
             expect_s=35),
        # Not yet run on a GPU: the expected time is a guess the first run corrects.
        Step("features", "features_throughput.py", ["--real", "--workdir", str(work / "feat")],
             240, "features_throughput.jsonl", expect_s=120),
        # 1,000 tokens: upstream is expected to run out of memory, ours to take minutes; it
        # needs a call of its own (--only clt_build,attribution_long).
        Step("attribution_long", "attribution_memory.py", ["long"], 540,
             "attribution_bench.jsonl", shared, expect_s=300, needs="clt_build", opt_in=True),
    ]


def smoke_steps(work: Path) -> list[Step]:
    return [
        Step("forward", "forward_throughput.py", ["--small"], 150, "forward_throughput.jsonl",
             dict(FWD_BENCH_DIR=str(work / "forward"), FWD_SIDES="hf_eager,tl_upstream,tl_ours",
                  WARMUP="1", ITERS="2")),
        Step("model_load", "model_load.py", ["--small"], 150, "model_load.jsonl",
             dict(LOAD_BENCH_DIR=str(work / "model_load"))),
        Step("attribution", "attribution_memory.py", ["--small", "seed"], 180,
             "attribution_bench.jsonl", dict(CLT_BENCH_DIR=str(work / "attribution"))),
        Step("shared_session", "shared_session.py", ["--small"], 150, "shared_session.jsonl",
             dict(SESSION_BENCH_DIR=str(work / "shared_session"))),
        Step("sae_cache_load", "sae_cache_load.py",
             ["--repeats", "1", "--workdir", str(work / "sae")], 180, "sae_cache_load.jsonl"),
        Step("features", "features_throughput.py",
             ["--small", "--skip", "memory,ray", "--contexts", "32", "--repeats", "1",
              "--workdir", str(work / "features")], 180, "features_throughput.jsonl"),
    ]


# --- rows ------------------------------------------------------------------------------------

def row(metric: str, ours, upstream, unit: str = "", better: str | None = None, **extra) -> dict:
    """One measurement, ours beside upstream; ``better`` is "lower", "higher" or None."""
    ratio = None
    if better and isinstance(ours, (int, float)) and isinstance(upstream, (int, float)) \
            and ours > 0 and upstream > 0:
        ratio = round(upstream / ours if better == "lower" else ours / upstream, 3)
    return dict(metric=metric, unit=unit, ours=ours, upstream=upstream, ratio=ratio,
                better=better, **extra)


def check(metric: str, value, ok: bool, tolerance=None, upstream=None) -> dict:
    """An agreement ours and upstream must meet; ``ok`` decides the exit status."""
    return dict(metric=metric, unit="", ours=value, upstream=upstream, ratio=None, better=None,
                check=dict(ok=bool(ok), tolerance=tolerance))


def last(records: list[dict], **match) -> dict | None:
    found = [r for r in records if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def forward_rows(records, tol) -> list[dict]:
    up, ours = last(records, side="tl_upstream"), last(records, side="tl_ours")
    summary = last(records, summary="forward_throughput")
    rows = []
    if up or ours:
        get = lambda r, k: r.get(k) if r else None  # noqa: E731
        rows.append(row("tokens/s (logits, no_grad)", get(ours, "tokens_per_s"),
                        get(up, "tokens_per_s"), "tok/s", "higher"))
        if (ours or up or {}).get("peak_gpu_gb_over_start") is not None:
            rows.append(row("peak GPU memory of a forward", get(ours, "peak_gpu_gb_over_start"),
                            get(up, "peak_gpu_gb_over_start"), "GB", "lower"))
    if summary:
        r = summary["ratio_vs_hf_eager"]
        rows.append(row("tokens/s ÷ HF eager (goal ours ≥ 0.9)", r.get("tl_ours"),
                        r.get("tl_upstream"), "×", "higher"))
        d = summary["max_abs_logprob_diff"]
        rows.append(row("max |Δ log-prob| vs HF eager", d["ours_vs_hf_eager"],
                        d["tl_upstream_vs_hf_eager"], "", "lower"))
        t = tol["forward_logprob"]
        if t is None:  # bf16: different attention kernels; reported, no bound established yet
            rows.append(row("max |Δ log-prob| ours vs upstream TL", d["ours_vs_tl_upstream"],
                            None))
        else:
            rows.append(check("max |Δ log-prob| ours vs upstream TL", d["ours_vs_tl_upstream"],
                              d["ours_vs_tl_upstream"] <= t, t))
    if ours:
        counts = ours.get("fast_path_counts", {})
        slow = {k: v for k, v in counts.items() if not k.endswith(":fast")}
        rows.append(check("fast forward on every block", "yes" if counts and not slow
                          else f"no: {slow or 'no counts'}", bool(counts) and not slow))
    return rows


def model_load_rows(records, tol) -> list[dict]:
    rows = []
    for flags in ("default", "circuit_tracer"):
        up, ours = last(records, side="upstream", flags=flags), last(records, side="ours",
                                                                      flags=flags)
        if not (up or ours):
            continue
        get = lambda r, k: r.get(k) if r else None  # noqa: E731
        rows.append(row(f"load time ({flags} flags)", get(ours, "load_s"), get(up, "load_s"),
                        "s", "lower"))
        if (ours or up).get("gpu_peak_gb") is not None:
            rows.append(row(f"peak GPU memory ({flags})", get(ours, "gpu_peak_gb"),
                            get(up, "gpu_peak_gb"), "GB", "lower"))
        rows.append(row(f"peak host RSS ({flags})", get(ours, "host_peak_rss_gb"),
                        get(up, "host_peak_rss_gb"), "GB", "lower"))
    p = last(records, parity="circuit_tracer")
    if p:
        rows.append(check("logits identical (circuit_tracer flags)", p["max_abs_logit_diff"],
                          p["equal"], "torch.equal"))
    p = last(records, parity="default")
    if p:
        t = tol["load_logprob_default"]
        rows.append(check("max |Δ log-prob| (default flags)", p["max_abs_logprob_diff"],
                          p["max_abs_logprob_diff"] <= t, t))
    return rows


def attribution_rows(records, tol, part: str) -> list[dict]:
    rows = []
    build = last(records, phase="build")
    if build and part == "seed":
        rows.append(row("build random model + CLT", build.get("s"), None, "s"))
    up, ours = last(records, side="upstream", part=part), last(records, side="ours", part=part)
    if not (up or ours):
        return rows

    def get(r, k):
        if r is None:
            return None
        if r.get("oom"):
            return f"OOM after {r['after_s']} s"
        if r.get("failed"):
            return f"failed (rc {r['returncode']})"
        return r.get(k)

    for key, metric, unit, better in (
            ("load_s", "ReplacementModel.from_pretrained (model + CLT)", "s", "lower"),
            ("load_gpu_peak_gb", "peak GPU memory after load", "GB", "lower"),
            ("l0_per_layer_token", "L0 per layer and token", "", None),
            ("attribute_s", "attribute() time", "s", "lower"),
            ("peak_gpu_gb", "attribute() peak GPU memory (goal ours ≤ 16 GB)", "GB", "lower"),
            ("peak_gpu_above_model_gb", "attribute() peak GPU above model + CLT", "GB", "lower"),
            ("host_peak_anon_during_gb", "attribute() peak host anonymous RSS", "GB", "lower"),
            ("nodes", "graph nodes", "", None),
            ("active_features", "active features", "", None)):
        if any(r is not None and (key in r or r.get("oom") or r.get("failed"))
               for r in (up, ours)):
            rows.append(row(metric, get(ours, key), get(up, key), unit, better))
    for side, r in (("ours", ours), ("upstream", up)):
        if r is not None and r.get("failed"):  # the side's process crashed (the step went on)
            rows.append(check(f"{side} side", f"failed (exit {r['returncode']})", False))
    if part != "seed":
        return rows
    c = last(records, part="seed", compare=True)
    if c is None:  # a side has no graph; an out-of-memory is a result, a crash failed above
        nc = last(records, part="seed", compare=False)
        if nc:
            rows.append(row("graphs compared", f"no graph from {nc['no_graph_from']}", None))
        return rows
    rows.append(check("same active features", c["same_active_features"],
                      c["same_active_features"]))
    rows.append(check("same logit targets", c["same_logits"], c["same_logits"]))
    frac = c["selected_in_both"] / max(c["selected"], 1)
    rows.append(check("selected features in both graphs", f"{c['selected_in_both']}/"
                      f"{c['selected']}", frac >= tol["selected_fraction"],
                      f"≥ {tol['selected_fraction']:.0%}"))
    if "max_abs_diff_over_max_abs" in c:
        rel = c["max_abs_diff_over_max_abs"]
        rows.append(check("max |ΔA| / max |A| on common nodes", rel, rel <= tol["graph_rel"],
                          tol["graph_rel"]))
    else:
        rows.append(check("adjacency compared", "shapes or logits differ", False))
    return rows


def session_rows(records, tol) -> list[dict]:
    rows = []
    shared, sep = last(records, path="shared"), last(records, path="separate")
    if shared or sep:
        get = lambda r, k: r.get(k) if r else None  # noqa: E731
        rows.append(row("tokens/s (logits + CLT + SAE features, all layers)",
                        get(shared, "tok_s"), get(sep, "tok_s"), "tok/s", "higher"))
        if shared and shared.get("peak_gpu_gb_above_dictionaries"):
            rows.append(row("peak GPU memory above CLT + SAEs",
                            shared["peak_gpu_gb_above_dictionaries"],
                            get(sep, "peak_gpu_gb_above_dictionaries"), "GB", "lower"))
        rows.append(row("model load (shared: 1 model; separate: 3)", get(shared, "load_s"),
                        get(sep, "load_s"), "s", "lower"))
    c = last(records, phase="compare")
    if c:
        d = c["max_abs_diff"]
        rows.append(check("max |Δ log-prob| at the last position", d["logprob_last_pos"],
                          d["logprob_last_pos"] <= tol["session_logprob"],
                          tol["session_logprob"]))
        rel = d["clt"] / max(d.get("clt_reference_max_abs", 0.0), 1e-30)
        rows.append(check("CLT features: max |Δ| / max |value|", rel,
                          rel <= tol["session_clt_rel"], tol["session_clt_rel"]))
        jac = min(v["active_set_jaccard"] for v in d["sae"].values())
        rows.append(check("SAE active sets: min Jaccard over layers", jac,
                          jac >= tol["session_sae_jaccard"], f"≥ {tol['session_sae_jaccard']}"))
    return rows


def sae_rows(records, tol) -> list[dict]:
    r = last(records)
    if r is None or "plain_s" not in r:
        return []
    return [
        row("SAE.from_pretrained, cached (ours) vs SAELens", r["cached_s"], r["plain_s"], "s",
            "lower"),
        row("first load incl. conversion (ours) vs SAELens", r["first_s"], r["plain_s"], "s",
            "lower"),
        row("peak RSS rise during load", r["cached_peak_rise_mb"], r["plain_peak_rise_mb"], "MB",
            "lower"),
        row("private memory after one encode", r["cached_private_after_encode_mb"],
            r["plain_private_after_encode_mb"], "MB", "lower"),
    ]


def features_rows(records, tol) -> list[dict]:
    """The statistics pass against the bare forward (same model, CLT and SAE on every layer)
    and against the naive per-tool loop; GPU memory at 1x and 10x the contexts."""
    sides = {r["side"]: r["tok_s"] for r in records if r.get("part") == "throughput"}
    rows = []
    if "stats" in sides:
        rows.append(row("statistics pass tokens/s vs bare forward (goal ≥ 0.8x)",
                        sides["stats"], sides.get("bare"), "tok/s", "higher"))
        rows.append(row("statistics pass tokens/s vs naive per-tool loop", sides["stats"],
                        sides.get("naive"), "tok/s", "higher"))
    memory = {r.get("scale"): r for r in records if r.get("part") == "memory"}
    if 1 in memory and 10 in memory:
        key = next((k for k in ("peak_gpu_mb_above_loaded", "peak_rss_shards_mb", "peak_rss_mb")
                    if k in memory[1]), None)
        if key:
            rows.append(row(f"memory at 10x vs 1x contexts ({key}; goal: flat)",
                            memory[10][key], memory[1][key], "MB", "lower"))
    agree = last(records, part="agreement")
    if agree:
        # Not 0: a feature at a top-k SAE's k-th place, or at a JumpReLU threshold, can flip
        # between the two paths' activations, which differ by ~1e-6 (hook vs cache order).
        blocks = agree["naive_vs_stats"].values()
        share = sum(v["count_mismatches"] for v in blocks) / sum(v["features"] for v in blocks)
        rows.append(check("features whose firing count differs from the naive loop's (share)",
                          share, share <= 0.01, "≤ 0.01"))
    return rows


EXTRACT = {
    "forward": forward_rows,
    "model_load": model_load_rows,
    "clt_build": lambda recs, tol: [row("build random model + CLT", b.get("s"), None, "s")
                                    for b in [last(recs, phase="build")] if b],
    "attribution": lambda recs, tol: attribution_rows(recs, tol, "seed"),
    "attribution_long": lambda recs, tol: attribution_rows(recs, tol, "long"),
    "shared_session": session_rows,
    "sae_cache_load": sae_rows,
    "features": features_rows,
}


# --- running ---------------------------------------------------------------------------------

class Running:
    """One step's process (its own process group, output to its log file) and its clock."""

    def __init__(self, step: Step, work: Path, python: str) -> None:
        self.step, self.log_path = step, work / "logs" / f"{step.name}.log"
        out = work / "raw" / step.name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (work / "tmp").mkdir(exist_ok=True)
        env = dict(os.environ, OUT=str(out), PYTHONUNBUFFERED="1", TMPDIR=str(work / "tmp"),
                   **step.env)
        # A qwen-interp cache of the step's own (never the user's), unless one is set.
        env.setdefault("QWEN_INTERP_CACHE", str(work / "cache" / step.name))
        self.t0 = time.time()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([python, str(HERE / step.script), *step.args], cwd=ROOT,
                                         env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def poll(self, deadline: float | None) -> str | None:
        """None while it runs within its budget and the call's deadline; then its status."""
        rc = self.proc.poll()
        if rc is not None:
            return "ok" if rc == 0 else f"failed (exit {rc})"
        now = time.time()
        over = now - self.t0 > self.step.budget_s
        if over or deadline is not None and now > deadline:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the step and the processes it started
            self.proc.wait()
            return (f"timed out after its {self.step.budget_s} s budget" if over else
                    f"timed out at the call's deadline, after {now - self.t0:.0f} s")
        return None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut off by a kill
    return records


def environment(python: str) -> dict:
    """Date, commit, machine, GPU and torch of this run (torch asked in a child process, so that
    this one holds no CUDA context while the steps measure memory)."""
    probe = subprocess.run(
        [python, "-c", "import json, torch; c = torch.cuda.is_available(); print(json.dumps("
         "[torch.__version__, torch.version.cuda, torch.cuda.get_device_name() if c else None]))"],
        capture_output=True, text=True)
    torch_version, cuda, gpu = (json.loads(probe.stdout.strip().splitlines()[-1])
                                if probe.returncode == 0 else (None, None, None))
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), 0)
    return dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commit=git_commit(),
        machine=f"{platform.machine()}, {os.cpu_count()} CPUs, {mem_kb / 2**20:.0f} GiB RAM, "
                f"Python {platform.python_version()}",
        gpu=gpu or "none (CPU)",
        torch=f"{torch_version}" + (f" (CUDA {cuda})" if cuda else ""),
        probe_error=None if probe.returncode == 0 else probe.stderr.strip()[-300:])


def git_commit() -> str:
    """HEAD (with "+dirty" when tracked files differ), else what --prepare recorded: the GPU
    machine gets the working tree without .git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        recorded = ROOT / ".whl" / "gpu_suite" / "COMMIT"
        if recorded.exists():
            return recorded.read_text().strip() + " (recorded by --prepare)"
        return "unknown"


def gpu_work_dir() -> Path:
    """GPU_SUITE_WORK, else /dev/shm when it can hold the CLT (writing 36 GB there costs no disk
    time), else /tmp."""
    if "GPU_SUITE_WORK" in os.environ:
        return Path(os.environ["GPU_SUITE_WORK"])
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free >= (CLT_DISK_GB + 5) * 1e9:
        return shm / "gpu_suite"
    return Path("/tmp/gpu_suite")


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 0.01:
            return f"{v:.3g}"
        return f"{v:.2e}"
    return str(v)


def table(rows: list[dict]) -> str:
    lines = ["| benchmark | metric | ours | upstream | ratio (× better) |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "check" in r:
            c = r["check"]
            ratio = ("ok" if c["ok"] else "**FAIL**") + (
                f" (tol {fmt(c['tolerance'])})" if c["tolerance"] is not None else "")
        else:
            ratio = fmt(r["ratio"]) + ("×" if r["ratio"] is not None else "")
        unit = f" ({r['unit']})" if r["unit"] and r["unit"] != "×" else ""
        cells = [r["benchmark"], r["metric"] + unit, fmt(r["ours"]), fmt(r["upstream"]), ratio]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--only", default="", help="comma-separated step names (opt-in ones too)")
    ap.add_argument("--total-s", type=float, default=None,
                    help="time for the whole call, counted from GPU_SUITE_T0 (default: 465 s on "
                         "the GPU, under the device call's 480 s; none in --smoke)")
    ap.add_argument("--jobs", type=int, default=None,
                    help="steps at a time (default: 1 on the GPU, whose timings must not share "
                         "the machine; 2 in --smoke, whose timings mean nothing)")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="multiplies every step's budget (a slower machine: 1.5)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()

    mode = "smoke" if args.smoke else "gpu"
    args.jobs = args.jobs or (2 if args.smoke else 1)
    t0 = float(os.environ.get("GPU_SUITE_T0", time.time()))
    total = args.total_s if args.total_s is not None else (None if args.smoke else 465.0)
    results = Path(os.environ["OUT"]) if os.environ.get("OUT") else HERE / "results"
    results.mkdir(parents=True, exist_ok=True)
    env = environment(args.python)
    if mode == "gpu" and env["gpu"] == "none (CPU)":
        print(f"no CUDA device for {args.python} ({env['probe_error'] or 'torch sees none'}): "
              "run `bash benchmarks/gpu_suite.sh --smoke` for the CPU mode", file=sys.stderr)
        return 2
    temp_work = args.smoke and "GPU_SUITE_WORK" not in os.environ
    work = (Path(tempfile.mkdtemp(prefix="gpu_suite_smoke_")) if temp_work
            else Path(os.environ["GPU_SUITE_WORK"]) if args.smoke else gpu_work_dir())
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    steps = smoke_steps(work) if args.smoke else gpu_steps(work)
    for step in steps:
        step.budget_s = max(1, round(step.budget_s * args.budget_scale))
        step.expect_s = min(step.expect_s, step.budget_s)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - {s.name for s in steps}
    if unknown:
        print(f"--only: unknown step(s) {sorted(unknown)}; steps: "
              f"{', '.join(s.name for s in steps)}", file=sys.stderr)
        return 2
    run_id = env["date"]
    print(f"[suite] {mode} run {run_id}: commit {env['commit']}; {env['gpu']}; torch "
          f"{env['torch']}; {env['machine']}; work folder {work}; results in {results}",
          flush=True)

    def command_of(step: Step) -> str:
        env_shown = [f"{k}={v}" for k, v in step.env.items() if not k.endswith("_DIR")]
        return " ".join(env_shown + ["python", f"benchmarks/{step.script}", *step.args])

    def skip_reason(step: Step) -> str | None:
        left = None if total is None else total - (time.time() - t0)
        if only and step.name not in only or not only and step.opt_in:
            return "opt-in: not selected" if step.opt_in else "not selected (--only)"
        if step.needs and status.get(step.needs) != "ok":
            return f"needs step {step.needs}: {status.get(step.needs, 'not run')}"
        if left is not None and left < step.expect_s:
            return f"expects ~{step.expect_s} s, {left:.0f} s left of the call's {total:.0f} s"
        free = shutil.disk_usage(work).free
        if step.disk_gb and free < step.disk_gb * 1e9:
            return f"needs {step.disk_gb} GB free in {work}, has {free / 1e9:.0f} GB"
        return None

    status: dict[str, str] = {}
    seconds: dict[str, float] = {}
    suite_log = open(results / "gpu_suite.log", "a")
    suite_log.write(f"\n===== {mode} run {run_id} (commit {env['commit']}) =====\n")
    # Steps start in order, at most `jobs` at a time; one waiting for another waits for it.
    pending, running = list(steps), []
    while pending or running:
        for step in list(pending):
            if len(running) >= args.jobs:
                break
            if step.needs in {r.step.name for r in running} | {p.name for p in pending}:
                break  # keep the order: it and the ones after it wait
            pending.remove(step)
            reason = skip_reason(step)
            if reason:
                status[step.name], seconds[step.name] = f"skipped: {reason}", 0.0
                print(f"[suite] {step.name}: skipped ({reason})", flush=True)
                continue
            print(f"[suite] {step.name}: {command_of(step)} (budget {step.budget_s} s)",
                  flush=True)
            running.append(Running(step, work, args.python))
        time.sleep(0.2)
        for r in list(running):
            st = r.poll(None if total is None else t0 + total)
            if st is None:
                continue
            running.remove(r)
            name = r.step.name
            status[name], seconds[name] = st, time.time() - r.t0
            text = r.log_path.read_text(errors="replace")
            suite_log.write(f"\n----- {name}: {command_of(r.step)} -> {st} "
                            f"({seconds[name]:.1f} s) -----\n{text}")
            suite_log.flush()
            print(f"[suite] {name}: {st} in {seconds[name]:.1f} s", flush=True)
            if st != "ok":
                print("".join(f"    {line}\n" for line in text.splitlines()[-40:]), flush=True)

    rows, raw_lines = [], []
    for step in steps:
        records = read_jsonl(work / "raw" / step.name / step.raw)
        raw_lines += [dict(step=step.name, run=run_id, **r) for r in records]
        st = status[step.name]
        meta = dict(benchmark=step.name, mode=mode, run=run_id, date=env["date"],
                    commit=env["commit"], machine=env["machine"], gpu=env["gpu"],
                    torch=env["torch"], command=command_of(step), step_status=st,
                    step_s=round(seconds[step.name], 1))
        step_rows = []
        if records:
            try:
                step_rows = EXTRACT[step.name](records, TOL[mode])
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
                step_rows = [check("summary of the step's records", f"unreadable: {e!r}", False)]
        if st == "ok":
            if not step_rows:
                step_rows.append(check("step", "ok but wrote no measurements", False))
        elif st.startswith("skipped") or mode == "gpu" and st.startswith("timed out"):
            # Out of time on the GPU machine: recorded (with what the step logged), not a failure.
            step_rows.append(row("step", st, None))
        else:  # a crash; in --smoke also a step past its budget
            step_rows.append(check("step", st, False))
        rows += [dict(meta, **r) for r in step_rows]
    suite_log.close()

    with open(results / "gpu_suite.jsonl", "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(results / "gpu_suite_raw.jsonl", "a") as f:
        for r in raw_lines:
            f.write(json.dumps(r) + "\n")
    text = table(rows)
    (results / "gpu_suite_table.md").write_text(
        f"{mode} run {run_id}, commit {env['commit']}, {env['gpu']}, torch {env['torch']}, "
        f"{env['machine']}\n\n{text}\n")
    print("\n" + text + "\n", flush=True)
    failed = [f"{r['benchmark']}: {r['metric']} = {fmt(r['ours'])}" for r in rows
              if "check" in r and not r["check"]["ok"]]
    print(f"[suite] {len(rows)} rows in {results / 'gpu_suite.jsonl'}; "
          f"{time.time() - t0:.0f} s in all", flush=True)
    if temp_work:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("[suite] FAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
