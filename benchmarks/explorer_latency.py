"""Benchmark (not a test): how fast ``qwen-interp explore`` answers a feature page, and whether
its memory stays flat in the size of the feature sidecar (issue 17).

A synthetic ``features/`` sidecar of the real shape (28 layers x 20,480 features of
bluelightai/clt-qwen3-1.7b-base-20k) is written with ``sidecar.write_sidecar``: every record is
checked by ``check_record`` and has what ``qwen-interp features compute`` writes at its defaults
(``StatsConfig``, ``export.viewer_records``): a "Top activations" group of 16 examples and 4
"Subsample Interval" groups of 6, each a 21-token window (15 before, 4 after) with per-token
activations rounded to 4 decimals, 10 top and 10 bottom logits, 100 ascending quantile values,
a 50-bin histogram and 8 co-active partners. Token strings come from a seeded Zipf-weighted
synthetic vocabulary, values from a seeded RNG, so zlib sees text-like redundancy, not
repeats. The sidecar is cached under ``.bench/explorer_latency/`` (git-ignored), keyed by its
parameters, so reruns skip the build.

The real server runs in a subprocess (``python -m qwen_interp explore --no-model --features RUN
--graphs EMPTY --port 0``) so its memory is its own (``/proc/<pid>/status``). From this process,
one new connection per request (``Connection: close``, no keep-alive), for N seeded random
(layer, feature) pairs over every layer:

  api:    ``GET /api/feature?dict=clt&layer=L&feature=F``: the feature page's data (the server
          reads one record by range, inflates it and sends JSON);
  range:  ``GET /features/layer_L.bin`` with ``Range: bytes=start-end`` from the index offsets,
          as circuit-tracer's graph viewer reads a feature panel (end inclusive, one byte more).

The first request of each kind is timed apart (the server parses the index on its first record).
Two plain paths serve the same files in the same run, for fewer requests (each costs a layer
file):

  static:     ``python -m http.server --directory FEATURES``: the standard library's static
              server, which has no Range support (it sends the whole layer file, the client
              slices the record out);
  whole-file: a server that reads the whole layer file per request and sends the range (the
              ``f.read()`` pattern of circuit-tracer's ``/data/`` handler).

Memory: the server's VmRSS at start, after the first record, after the run, and VmHWM (peak)
after the run; for the real sidecar and a *lean* one with the same layers and features (so the
same index of offsets, which is O(features)) but about 12x fewer bytes on disk. Flat in
sidecar size means the two peaks agree and neither grows with the requests: the server keeps
the index and one record at a time. ``--read-all`` (on in ``--small``) also reads every record
once and reports the growth of the peak over the post-warm-up RSS; a server that cached records
or read whole files would grow by at least one layer file.

  .venv/bin/python benchmarks/explorer_latency.py            # 28 x 20,480, 2,000 requests
  .venv/bin/python benchmarks/explorer_latency.py --small    # 3 x 2,000, 300 requests, seconds

``--out FILE`` writes the results as JSON; a table is printed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import gzip
import http.client
import itertools
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from qwen_interp.apps.features.sidecar import INDEX_NAME, LENGTH_BYTES, write_sidecar

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench" / "explorer_latency"
FORMAT = 1  # bump when the synthetic records change: the cache key includes it
GOAL_P95_MS = 100.0
TRANSCODER_ID = "bench/clt-qwen3-1.7b-base-20k"
WINDOW_POOL = 20_000  # distinct token windows per process; a record draws 40 of them


@dataclass(frozen=True)
class Shape:
    """What one record holds; ``real`` is ``features compute`` at its defaults."""

    name: str
    top: int = 16  # StatsConfig.top_k
    groups: int = 4  # export.QUANTILE_GROUPS over StatsConfig.samples = 24
    per_group: int = 6
    before: int = 15  # StatsConfig.before / after: a 21-token window
    after: int = 4
    logits: int = 10
    quantiles: int = 100
    bins: int = 50  # export.VIEWER_BINS
    partners: int = 8  # StatsConfig.partners


SHAPES = {"real": Shape("real"),
          "lean": Shape("lean", top=1, groups=0, logits=2, quantiles=4, bins=4, partners=0)}


@dataclass(frozen=True)
class Config:
    layers: int = 28
    features: int = 20_480
    requests: int = 2_000
    naive_requests: int = 40
    read_all: bool = False
    seed: int = 0


SMALL = Config(layers=3, features=2_000, requests=300, naive_requests=20, read_all=True)


# --- synthetic records ---------------------------------------------------------------------------
_COMMON = [" the", ",", ".", " of", " and", " to", " a", " in", "\n", " is", " that", " for",
           " it", " was", " on", " with", " as", " be", " this", " by", "'s", " are", " at",
           " from", " he", " or", " not", " have", " an", " which", " his", " but", "(", ")",
           " they", " we", ":", "-", " you", " one", "\n\n", " \"", "é", " 中"]


class RecordMaker:
    """Records of one ``Shape``: windows drawn from a pool of seeded token windows (Zipf-weighted
    synthetic vocabulary; most tokens of a window at 0, as a sparse feature's context is), the
    other fields drawn per record. Building a record is list picking, no JSON work."""

    def __init__(self, shape: Shape, seed: int) -> None:
        self.shape = shape
        rng = random.Random(f"vocab-{seed}")
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        vocab = list(_COMMON)
        while len(vocab) < 8192:
            word = "".join(rng.choices(letters, k=min(1 + int(rng.expovariate(1 / 4)), 12)))
            kind = rng.random()
            vocab.append(" " + word if kind < 0.6 else word.capitalize() if kind < 0.7 else word)
        self.vocab = vocab
        cum = list(itertools.accumulate(1 / (rank + 10) for rank in range(len(vocab))))
        width = shape.before + 1 + shape.after
        self.windows = []
        for _ in range(WINDOW_POOL):
            # A window at the start of a document lacks some of its tokens before (export drops
            # them), so train_token_ind is the number of tokens kept before.
            cut = rng.randrange(shape.before + 1) if rng.random() < 0.1 else 0
            tokens = rng.choices(vocab, cum_weights=cum, k=width - cut)
            peak = rng.uniform(0.5, 12.0)
            acts = [round(rng.uniform(0, peak), 4) if rng.random() < 0.25 else 0.0
                    for _ in tokens]
            acts[shape.before - cut] = round(peak, 4)
            self.windows.append((tokens, acts, shape.before - cut))

    def records(self, layer: int, features: int, seed: int):
        """The records of one layer, in feature order (a generator), the same on every run."""
        shape, windows = self.shape, self.windows
        rng = random.Random(f"layer-{seed}-{layer}")
        n_examples = shape.top + shape.groups * shape.per_group
        for feature in range(features):
            picks = rng.sample(range(len(windows)), n_examples)
            examples = [{"tokens": windows[p][0], "tokens_acts_list": windows[p][1],
                         "train_token_ind": windows[p][2],
                         "is_repeated_datapoint": i >= shape.top and rng.random() < 0.03}
                        for i, p in enumerate(picks)]
            groups = [{"quantile_name": "Top activations", "examples": examples[:shape.top]}]
            for g in range(shape.groups):
                start = shape.top + g * shape.per_group
                groups.append({"quantile_name": f"Subsample Interval {g}",
                               "examples": examples[start:start + shape.per_group]})
            act_max = float(rng.uniform(0.5, 12.0))
            act_min = min(act_max, rng.uniform(1e-4, 0.05))
            quantiles = sorted(rng.uniform(act_min, act_max) for _ in range(shape.quantiles - 1))
            histogram = [float(rng.randint(0, 4000)) if rng.random() < 0.6 else 0.0
                         for _ in range(shape.bins)]
            yield {
                "transcoder_id": TRANSCODER_ID,
                "index": feature,
                "examples_quantiles": groups,
                "top_logits": rng.sample(self.vocab, shape.logits),
                "bottom_logits": rng.sample(self.vocab, shape.logits),
                "act_min": act_min,
                "act_max": act_max,
                "quantile_values": [*quantiles, act_max],
                "histogram": histogram,
                "activation_frequency": rng.uniform(0, 0.01),
                "coactive": [{"feature": rng.randrange(features), "count": rng.randint(1, 16)}
                             for _ in range(shape.partners)],
            }


# --- the sidecar ---------------------------------------------------------------------------------
def run_folder(cache: Path, shape: Shape, layers: int, features: int, seed: int) -> Path:
    return cache / f"{shape.name}-{layers}x{features}-seed{seed}-v{FORMAT}"


def _write_part(folder: str, shape: Shape, layers: list[int], features: int, seed: int) -> None:
    maker = RecordMaker(shape, seed)
    write_sidecar(folder, ((layer, maker.records(layer, features, seed)) for layer in layers))


def estimate_bytes(shape: Shape, layers: int, features: int, seed: int) -> int:
    """The sidecar's size from 200 encoded records (for the free-space check)."""
    from qwen_interp.apps.features.sidecar import encode_record
    sample = itertools.islice(RecordMaker(shape, seed).records(0, features, seed), 200)
    sizes = [len(encode_record(record)) for record in sample]
    return int(sum(sizes) / len(sizes) * layers * features)


def ensure_sidecar(cache: Path, shape: Shape, layers: int, features: int, seed: int,
                   jobs: int) -> dict:
    """The run folder (``<run>/features/``) of this sidecar, built unless cached; its facts."""
    run = run_folder(cache, shape, layers, features, seed)
    done = run / "build.json"
    if done.is_file() and (run / "features" / INDEX_NAME).is_file():
        return {**json.loads(done.read_text()), "cached": True}
    cache.mkdir(parents=True, exist_ok=True)
    need = estimate_bytes(shape, layers, features, seed)
    free = shutil.disk_usage(cache).free
    if free < need * 1.1 + (1 << 30):
        sys.exit(f"explorer_latency: the {shape.name} sidecar needs about {need / 1e9:.1f} GB; "
                 f"{free / 1e9:.1f} GB free under {cache}")
    print(f"building the {shape.name} sidecar {layers} x {features:,} (about "
          f"{need / 1e9:.2f} GB) in {run} ...", flush=True)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    start = time.perf_counter()
    jobs = max(1, min(jobs, layers))
    if jobs == 1:
        _write_part(str(run / "features"), shape, list(range(layers)), features, seed)
    else:
        # write_sidecar is one process; each part writes every jobs-th layer, then
        # the layer files move into one folder and the per-layer index entries are joined (the
        # index is a JSON object keyed by layer, the layer files independent of each other).
        chunks = [list(range(layers))[i::jobs] for i in range(jobs)]
        chunks = [sorted(c) for c in chunks if c]
        parts = [run / f"part{i}" for i in range(len(chunks))]
        fork = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(len(chunks), mp_context=fork) as pool:
            for job in [pool.submit(_write_part, str(part), shape, chunk, features, seed)
                        for part, chunk in zip(parts, chunks)]:
                job.result()
        joined = run / "features.joining"
        joined.mkdir()
        index = {}
        for part in parts:
            part_index = json.loads(gzip.decompress((part / INDEX_NAME).read_bytes()))
            for layer, entry in part_index.items():
                os.rename(part / entry["filename"], joined / entry["filename"])
                index[layer] = entry
            shutil.rmtree(part)
        index = {str(layer): index[str(layer)] for layer in range(layers)}
        (joined / INDEX_NAME).write_bytes(
            gzip.compress(json.dumps(index, separators=(",", ":")).encode(), mtime=0))
        os.rename(joined, run / "features")
        for lock in run.glob(".part*.lock"):  # write_sidecar's locks of the parts
            lock.unlink()
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in (run / "features").iterdir())
    records = layers * features
    record_bytes = size - (run / "features" / INDEX_NAME).stat().st_size
    facts = {"shape": asdict(shape), "layers": layers, "features": features, "seed": seed,
             "records": records, "bytes": size, "mean_record_bytes": record_bytes / records,
             "layer_file_bytes": record_bytes / layers,
             "index_bytes": (run / "features" / INDEX_NAME).stat().st_size,
             "build_s": seconds, "build_jobs": jobs}
    done.write_text(json.dumps(facts, indent=1))
    return {**facts, "cached": False}


def read_offsets(features_dir: Path) -> dict[int, tuple[str, list[int]]]:
    index = json.loads(gzip.decompress((features_dir / INDEX_NAME).read_bytes()))
    return {int(layer): (entry["filename"], entry["offsets"]) for layer, entry in index.items()}


# --- servers -------------------------------------------------------------------------------------
class ServerProcess:
    """A server in a subprocess; ``port``, ``memory()`` (VmRSS, VmHWM in MiB), ``stop()``."""

    def __init__(self, cmd: list[str], ready: str, what: str) -> None:
        self.what = what
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=ROOT)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            found = re.search(ready, line)
            if found:
                self.port = int(found.group(1))
                break
        else:
            self.proc.wait(10)
            raise RuntimeError(f"{what} did not start:\n{''.join(lines)}")
        self.start_s = time.perf_counter() - start

    def memory(self) -> dict[str, float]:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        out = {}
        for name in ("VmRSS", "VmHWM"):
            kib = re.search(rf"^{name}:\s+(\d+) kB", status, re.M)
            out[name] = int(kib.group(1)) / 1024
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def start_explorer(run: Path, graphs: Path) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "qwen_interp", "explore", "--no-model",
                          "--features", str(run), "--graphs", str(graphs), "--port", "0"],
                         r"explorer: serving http://[^:]+:(\d+)/", "qwen-interp explore")


def start_static(features_dir: Path) -> ServerProcess:
    return ServerProcess([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1",
                          "--directory", str(features_dir)], r"Serving HTTP on \S+ port (\d+)",
                         "python -m http.server")


def start_whole_file(features_dir: Path) -> ServerProcess:
    return ServerProcess([sys.executable, str(Path(__file__).resolve()), "--serve-whole-file",
                          str(features_dir)], r"whole-file: serving on port (\d+)",
                         "whole-file server")


class WholeFileHandler(BaseHTTPRequestHandler):
    """Reads the whole layer file, then sends the requested range of it."""

    folder: Path

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        path = self.folder / self.path.lstrip("/").removeprefix("features/")
        with open(path, "rb") as fh:
            content = fh.read()
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        body = content[first:last + 1]
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {first}-{first + len(body) - 1}/{len(content)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        pass


def serve_whole_file(folder: str) -> None:
    WholeFileHandler.folder = Path(folder)
    server = ThreadingHTTPServer(("127.0.0.1", 0), WholeFileHandler)
    print(f"whole-file: serving on port {server.server_address[1]}", flush=True)
    server.serve_forever()


# --- the client ----------------------------------------------------------------------------------
def get(port: int, path: str, headers: dict | None = None) -> tuple[float, int, bytes]:
    """(seconds, status, body) of one GET on a new connection, from connect to the last byte."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("GET", path, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return time.perf_counter() - start, response.status, body


def check_api(status: int, body: bytes, layer: int, feature: int) -> None:
    record = json.loads(body)
    if status != 200 or record.get("index") != feature or record.get("layer") != layer:
        raise AssertionError(f"/api/feature {layer}/{feature}: HTTP {status}, {body[:200]!r}")


def check_blob(blob: bytes, feature: int, where: str) -> None:
    """The viewer's reading of a ranged answer: length prefix, then zlib JSON."""
    length = int.from_bytes(blob[:LENGTH_BYTES], "little")
    record = json.loads(zlib.decompress(blob[LENGTH_BYTES:LENGTH_BYTES + length]))
    if record["index"] != feature:
        raise AssertionError(f"{where}: record {record['index']}, expected {feature}")


def range_path(offsets: dict, layer: int, feature: int, prefix: str) -> tuple[str, dict, int]:
    name, starts = offsets[layer]
    first, end = starts[feature], starts[feature + 1]
    return f"{prefix}{name}", {"Range": f"bytes={first}-{end}"}, first


def sample_features(config: Config, count: int, salt: str) -> list[tuple[int, int]]:
    rng = random.Random(f"requests-{config.seed}-{salt}")
    return [(rng.randrange(config.layers), rng.randrange(config.features)) for _ in range(count)]


def summary(seconds: list[float]) -> dict:
    ms = sorted(s * 1e3 for s in seconds)

    def pct(p: float) -> float:  # nearest rank
        return ms[min(len(ms) - 1, max(0, round(p / 100 * len(ms) + 0.5) - 1))]
    return {"n": len(ms), "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
            "max_ms": ms[-1], "mean_ms": sum(ms) / len(ms)}


def measure_explorer(run: Path, graphs: Path, config: Config, read_all: bool) -> dict:
    features_dir = run / "features"
    offsets = read_offsets(features_dir)
    pairs = sample_features(config, config.requests + 1, "explorer")
    server = start_explorer(run, graphs)
    try:
        out = {"start_s": server.start_s, "memory_start": server.memory()}
        layer, feature = pairs[0]
        seconds, status, body = get(server.port, f"/api/feature?dict=clt&layer={layer}"
                                                 f"&feature={feature}")
        check_api(status, body, layer, feature)
        out["first_api_ms"] = seconds * 1e3
        path, headers, _ = range_path(offsets, layer, feature, "/features/")
        seconds, status, blob = get(server.port, path, headers)
        check_blob(blob, feature, path)
        out["first_range_ms"] = seconds * 1e3
        out["memory_warm"] = server.memory()
        api, ranged = [], []
        for layer, feature in pairs[1:]:
            seconds, status, body = get(server.port, f"/api/feature?dict=clt&layer={layer}"
                                                     f"&feature={feature}")
            check_api(status, body, layer, feature)
            api.append(seconds)
            path, headers, _ = range_path(offsets, layer, feature, "/features/")
            seconds, status, blob = get(server.port, path, headers)
            if status != 206:
                raise AssertionError(f"{path} {headers}: HTTP {status}")
            check_blob(blob, feature, path)
            ranged.append(seconds)
        out["api"], out["range"] = summary(api), summary(ranged)
        out["memory_end"] = server.memory()
        if read_all:  # every record once: a server that keeps records would grow here
            start = time.perf_counter()
            for layer in range(config.layers):
                for feature in range(config.features):
                    _, status, body = get(server.port, f"/api/feature?dict=clt&layer={layer}"
                                                       f"&feature={feature}")
                    if status != 200:
                        raise AssertionError(f"/api/feature {layer}/{feature}: HTTP {status}")
            out["read_all"] = {"records": config.layers * config.features,
                               "seconds": time.perf_counter() - start,
                               "memory": server.memory()}
        return out
    finally:
        server.stop()


def measure_naive(kind: str, run: Path, config: Config) -> dict:
    features_dir = run / "features"
    offsets = read_offsets(features_dir)
    server = start_static(features_dir) if kind == "static" else start_whole_file(features_dir)
    prefix = "/" if kind == "static" else "/features/"
    try:
        out = {"start_s": server.start_s, "memory_start": server.memory()}
        seconds, statuses = [], set()
        for layer, feature in sample_features(config, config.naive_requests, "naive"):
            path, headers, first = range_path(offsets, layer, feature, prefix)
            took, status, body = get(server.port, path, headers)
            statuses.add(status)
            blob = body[first:] if status == 200 else body  # no Range support: the whole file
            check_blob(blob, feature, f"{kind} {path}")
            seconds.append(took)
        out.update(latency=summary(seconds), statuses=sorted(statuses),
                   memory_end=server.memory())
        return out
    finally:
        server.stop()


# --- report --------------------------------------------------------------------------------------
def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True).stdout.strip() or None
    except OSError:
        commit = None
    mem = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "ram_gib": int(mem.group(1)) / 2**20,
            "load_avg_start": os.getloadavg(), "commit": commit}


def table(results: dict) -> str:
    real, naive = results["explorer"]["real"], results["naive"]
    rows = ["| path | requests | first | p50 | p95 | p99 | max | p50 vs explore api |",
            "|---|---|---|---|---|---|---|---|"]

    def row(name: str, lat: dict, first: float | None) -> str:
        ratio = lat["p50_ms"] / real["api"]["p50_ms"]
        first_text = f"{first:.1f} ms" if first is not None else ""
        return (f"| {name} | {lat['n']:,} | {first_text} | {lat['p50_ms']:.1f} ms | "
                f"{lat['p95_ms']:.1f} ms | {lat['p99_ms']:.1f} ms | {lat['max_ms']:.1f} ms | "
                f"{ratio:.2f}x |")
    rows.append(row("explore `/api/feature`", real["api"], real["first_api_ms"]))
    rows.append(row("explore `/features/` range", real["range"], real["first_range_ms"]))
    for kind, title in (("static", "`python -m http.server` (no Range: whole file)"),
                        ("whole_file", "whole-file read, range sent")):
        rows.append(row(title, naive[kind]["latency"], None))
    rows += ["", "| server | sidecar | on disk | RSS start | after 1st | VmRSS end | VmHWM end |",
             "|---|---|---|---|---|---|---|"]
    sidecars = results["sidecars"]
    for name, side in results["explorer"].items():
        rows.append(f"| explore | {name} | {sidecars[name]['bytes'] / 1e6:,.0f} MB | "
                    f"{side['memory_start']['VmRSS']:.1f} MiB | "
                    f"{side['memory_warm']['VmRSS']:.1f} MiB | "
                    f"{side['memory_end']['VmRSS']:.1f} MiB | "
                    f"{side['memory_end']['VmHWM']:.1f} MiB |")
    for kind in ("static", "whole_file"):
        side = naive[kind]
        rows.append(f"| {kind} | real | {sidecars['real']['bytes'] / 1e6:,.0f} MB | "
                    f"{side['memory_start']['VmRSS']:.1f} MiB | | "
                    f"{side['memory_end']['VmRSS']:.1f} MiB | "
                    f"{side['memory_end']['VmHWM']:.1f} MiB |")
    if "read_all" in real:
        every = real["read_all"]
        rows.append(f"\nevery record once ({every['records']:,} in {every['seconds']:.1f} s): "
                    f"VmHWM {every['memory']['VmHWM']:.1f} MiB, "
                    f"{every['memory']['VmHWM'] - real['memory_warm']['VmRSS']:+.1f} MiB over "
                    f"the RSS after the first request")
    return "\n".join(rows)


def run_benchmark(config: Config, cache: Path, jobs: int) -> dict:
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "config": asdict(config),
               "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "goal_p95_ms": GOAL_P95_MS, "sidecars": {}, "explorer": {}}
    for name in ("real", "lean"):
        results["sidecars"][name] = ensure_sidecar(cache, SHAPES[name], config.layers,
                                                   config.features, config.seed, jobs)
    graphs = cache / "empty-graphs"
    graphs.mkdir(parents=True, exist_ok=True)
    for name in ("real", "lean"):
        run = run_folder(cache, SHAPES[name], config.layers, config.features, config.seed)
        print(f"explore, {name} sidecar: {config.requests:,} x (api, range) ...", flush=True)
        results["explorer"][name] = measure_explorer(run, graphs, config,
                                                     config.read_all and name == "real")
    real_run = run_folder(cache, SHAPES["real"], config.layers, config.features, config.seed)
    results["naive"] = {}
    for kind in ("static", "whole_file"):
        print(f"{kind}: {config.naive_requests} requests ...", flush=True)
        results["naive"][kind] = measure_naive(kind, real_run, config)
    real = results["explorer"]["real"]
    results["goal_met"] = real["api"]["p95_ms"] <= GOAL_P95_MS
    results["machine"]["load_avg_end"] = os.getloadavg()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true",
                        help=f"{SMALL.layers} layers x {SMALL.features:,} features, "
                             f"{SMALL.requests} requests, every record read once")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--features", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--naive-requests", type=int)
    parser.add_argument("--read-all", action="store_true", default=None,
                        help="also read every record once (memory flatness)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cache-dir", type=Path, default=CACHE,
                        help=f"where sidecars are built and kept (default {CACHE})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="processes writing the sidecar (default: one per CPU)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--serve-whole-file", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_whole_file:
        serve_whole_file(args.serve_whole_file)
        return 0
    config = SMALL if args.small else Config()
    changes = {name: getattr(args, name) for name in
               ("layers", "features", "requests", "naive_requests", "read_all", "seed")
               if getattr(args, name) is not None}
    config = Config(**{**asdict(config), **changes})
    results = run_benchmark(config, args.cache_dir, args.jobs)
    print(table(results))
    real = results["explorer"]["real"]
    print(f"goal p95 <= {GOAL_P95_MS:.0f} ms for /api/feature: "
          f"{'met' if results['goal_met'] else 'missed'} ({real['api']['p95_ms']:.1f} ms)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
