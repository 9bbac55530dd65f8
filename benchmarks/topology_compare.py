"""Topology, side by side: ``qwen-interp topology``'s map against the plain KeplerMapper path a
researcher would write, on the same seeded random float32 "decoder vectors", at a few sizes.

- ``ours``: :func:`qwen_interp.apps.topology.build.map_features` with the command's defaults
  (``Settings()``: 16-d streamed randomized PCA, lens = PC1..PC2, resolutions 4, 8, 16,
  overlap 0.3, landmark single linkage with k 10, eps = 0.99 quantile of the landmarks'
  distance to their 10th nearest landmark, min size 3) on the in-memory array (``from_array``;
  the command's ``materialize`` step only matters for a dictionary read from disk).
- ``plain``: KeplerMapper 2.1.0 directly. Lens:
  ``km.KeplerMapper().fit_transform(X, projection=sklearn.decomposition.PCA(2, random_state=seed))``
  (KeplerMapper's default ``MinMaxScaler`` applies); then for each resolution R in 4, 8, 16:
  ``mapper.map(lens, X, cover=km.Cover(n_cubes=R, perc_overlap=0.3),
  clusterer=sklearn.cluster.DBSCAN(eps=eps, min_samples=3))`` (default ``GraphNerve``, no
  duplicate-node removal). ``eps`` follows our rule in the space DBSCAN clusters in (all ``d``
  coordinates): the 0.99 quantile of the distance to the 10th nearest other row, estimated from
  a seeded sample of ``min(n, 2000)`` query rows against all ``n`` rows (scikit-learn
  ``NearestNeighbors``); that search is timed as the plain path's ``eps`` phase.

Each (path, n) runs in a fresh subprocess (this script with ``--one PATH N``), which generates
the vectors the same seeded way (``topology_scale.random_vectors``), maps them, and reports its
phases' wall time and its peak resident memory (``VmHWM`` of /proc/self/status, which includes
the interpreter, the imports and the vectors: ``rss_after_imports_bytes`` and
``vectors_bytes`` are reported beside it). The parent kills a measurement past ``--limit-s``
(``timed out``) or whose resident memory passes ``--mem-cap-gb`` (polled every 0.2 s), and then
runs no larger n for that path (``not run: ...``). The two paths run different algorithms, so
their maps differ; node counts are reported to show that both made maps, the point is cost.

    python benchmarks/topology_compare.py            # n = 5,000 / 20,000 / 60,000, d = 2,048
    python benchmarks/topology_compare.py --small    # n = 500 / 2,000, d = 64: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from topology_scale import peak_rss_bytes, random_vectors  # noqa: E402

RESULTS = HERE / "results" / "topology_compare.json"
PATHS = ("ours", "plain")
SIZES, SMALL_SIZES = (5_000, 20_000, 60_000), (500, 2_000)
D_MODEL, SMALL_D = 2_048, 64
RESOLUTIONS, OVERLAP, K, EPS_QUANTILE, MIN_SAMPLES = (4, 8, 16), 0.3, 10, 0.99, 3
EPS_SAMPLE = 2_000


def rss_bytes(pid: int | str = "self", field: str = "VmRSS") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- one measurement (child process) ---------------------------------------------------------

def run_ours(x: np.ndarray, seed: int) -> dict:
    from qwen_interp.apps.topology.build import Settings, map_features
    from qwen_interp.apps.topology.vectors import from_array
    tmap = map_features(from_array(x, name="random", source="decoder"), Settings(seed=seed))
    return {"seconds": dict(tmap.seconds), "eps": tmap.eps, "eps_space_dims": tmap.settings.dims,
            "landmarks": tmap.landmarks,
            "levels": [{"resolution": lv.resolution, "nodes": len(lv.nodes),
                        "edges": len(lv.edges)} for lv in tmap.levels]}


def plain_eps(x: np.ndarray, seed: int) -> float:
    """0.99 quantile of the distance to the 10th nearest other row, from a sample of rows."""
    from sklearn.neighbors import NearestNeighbors
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(x), size=min(len(x), EPS_SAMPLE), replace=False))
    dist, _ = NearestNeighbors(n_neighbors=min(K + 1, len(x))).fit(x).kneighbors(x[sample])
    return float(np.quantile(dist[:, -1], EPS_QUANTILE))  # column 0 is the row itself


def run_plain(x: np.ndarray, seed: int) -> dict:
    import kmapper as km
    from sklearn.cluster import DBSCAN
    from sklearn.decomposition import PCA
    t0 = time.perf_counter()
    mapper = km.KeplerMapper(verbose=0)
    lens = mapper.fit_transform(x, projection=PCA(2, random_state=seed))
    t1 = time.perf_counter()
    eps = plain_eps(x, seed)
    t2 = time.perf_counter()
    seconds, levels = {"lens": round(t1 - t0, 3), "eps": round(t2 - t1, 3)}, []
    for r in RESOLUTIONS:
        t = time.perf_counter()
        graph = mapper.map(lens, x, cover=km.Cover(n_cubes=r, perc_overlap=OVERLAP),
                           clusterer=DBSCAN(eps=eps, min_samples=MIN_SAMPLES))
        seconds[f"map_{r}"] = round(time.perf_counter() - t, 3)
        levels.append({"resolution": r, "nodes": len(graph["nodes"]),
                       "edges": sum(len(v) for v in graph["links"].values())})
    return {"seconds": seconds, "eps": eps, "eps_space_dims": x.shape[1], "levels": levels}


def one(path: str, n: int, d: int, seed: int) -> dict:
    import kmapper  # noqa: F401  both paths import the same libraries before the baseline
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    import qwen_interp.apps.topology.build  # noqa: F401
    after_imports = rss_bytes()
    x = random_vectors(n, d, seed)
    after_vectors = rss_bytes()
    t0 = time.perf_counter()
    result = run_ours(x, seed) if path == "ours" else run_plain(x, seed)
    result["seconds"]["total"] = round(time.perf_counter() - t0, 3)
    return {"path": path, "n": n, "d": d, "status": "ok", "vectors_bytes": x.nbytes,
            "rss_after_imports_bytes": after_imports, "rss_after_vectors_bytes": after_vectors,
            "peak_rss_bytes": peak_rss_bytes(), **result}


# --- the comparison (parent process) ---------------------------------------------------------

def measure(path: str, n: int, d: int, seed: int, limit_s: float, cap_bytes: int) -> dict:
    """Run ``--one path n`` in a fresh process group; kill it past the time or memory cap."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", path, str(n),
           "--d", str(d), "--seed", str(seed)]
    load = os.getloadavg()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
        status, seen = None, 0
        while proc.poll() is None:
            elapsed = time.perf_counter() - start
            seen = max(seen, rss_bytes(proc.pid) or 0)
            if elapsed > limit_s:
                status = f"timed out after {limit_s:g} s"
            elif seen > cap_bytes:
                status = f"exceeded memory cap {cap_bytes / 1e9:g} GB"
            if status:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.2)
        wall = round(time.perf_counter() - start, 1)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    base = {"path": path, "n": n, "d": d, "process_wall_s": wall, "loadavg_before": load,
            "max_rss_seen_bytes": seen}
    if status:
        return {**base, "status": status}
    if proc.returncode != 0 or not stdout.strip():
        return {**base, "status": f"failed (exit {proc.returncode})", "stderr": stderr[-2000:]}
    return {**base, **json.loads(stdout.strip().splitlines()[-1])}


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def compare(sizes, d: int, seed: int, limit_s: float, cap_bytes: int) -> dict:
    blocked: dict[str, str] = {}
    runs, rows = [], []
    for n in sizes:
        row = {"n": n, "vectors_bytes": n * d * 4}
        for path in PATHS:
            if path in blocked:
                rec = {"path": path, "n": n, "d": d, "status": f"not run: {blocked[path]}"}
            else:
                rec = measure(path, n, d, seed, limit_s, cap_bytes)
                if rec["status"] != "ok":
                    blocked[path] = f"{rec['status']} at n={n}"
            runs.append(rec)
            print(f"{path:5s} n={n}: {rec['status']}"
                  + (f", {rec['seconds']['total']} s" if rec["status"] == "ok" else ""),
                  file=sys.stderr, flush=True)
            ok = rec["status"] == "ok"
            row[path] = {"status": rec["status"],
                         "seconds": rec["seconds"]["total"] if ok else None,
                         "peak_rss_bytes": rec["peak_rss_bytes"] if ok else None,
                         "nodes": [lv["nodes"] for lv in rec["levels"]] if ok else None}
        row["time_plain_over_ours"] = ratio(row["plain"]["seconds"], row["ours"]["seconds"])
        row["peak_plain_over_ours"] = ratio(row["plain"]["peak_rss_bytes"],
                                            row["ours"]["peak_rss_bytes"])
        rows.append(row)
    return {"rows": rows, "runs": runs}


def table(rows) -> str:
    def gb(b):
        return f"{b / 1e9:.2f}" if b is not None else "-"

    def cell(r, path, key):
        v = r[path][key]
        return (f"{v:.1f}" if key == "seconds" else "/".join(map(str, v))) if v is not None \
            else r[path]["status"].split(" after")[0].split(":")[0]
    head = ("n", "vectors GB", "ours s", "plain s", "plain/ours t", "ours peak GB",
            "plain peak GB", "plain/ours mem", "ours nodes", "plain nodes")
    lines = [" | ".join(head)]
    for r in rows:
        lines.append(" | ".join([
            f"{r['n']:,}", gb(r["vectors_bytes"]), cell(r, "ours", "seconds"),
            cell(r, "plain", "seconds"), str(r["time_plain_over_ours"] or "-"),
            gb(r["ours"]["peak_rss_bytes"]), gb(r["plain"]["peak_rss_bytes"]),
            str(r["peak_plain_over_ours"] or "-"), cell(r, "ours", "nodes"),
            cell(r, "plain", "nodes")]))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="n = 500, 2,000; d = 64")
    parser.add_argument("--sizes", default=None, help="comma-separated n (overrides defaults)")
    parser.add_argument("--d", type=int, default=None, help=f"dimension (default {D_MODEL})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-s", type=float, default=600.0,
                        help="wall-clock limit per measurement (default 600)")
    parser.add_argument("--mem-cap-gb", type=float, default=16.0,
                        help="resident-memory cap per measurement (default 16)")
    parser.add_argument("--out", default=None, help="results JSON (default: "
                        "benchmarks/results/topology_compare.json for the defaults, else none)")
    parser.add_argument("--one", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    d = args.d or (SMALL_D if args.small else D_MODEL)
    if args.one:
        path, n = args.one[0], int(args.one[1])
        if path not in PATHS:
            parser.error(f"--one {path}: expected one of {', '.join(PATHS)}")
        print(json.dumps(one(path, n, d, args.seed)))
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else \
        (SMALL_SIZES if args.small else SIZES)
    import kmapper
    import sklearn
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    compared = compare(sizes, d, args.seed, args.limit_s, int(args.mem_cap_gb * 1e9))
    result = {
        "benchmark": "topology_compare", "d": d, "sizes": list(sizes), "dtype": "float32",
        "seed": args.seed, "limit_s": args.limit_s, "mem_cap_gb": args.mem_cap_gb,
        "paths": {
            "ours": "qwen_interp.apps.topology.build.map_features(from_array(X), Settings()) "
                    "(the command's defaults)",
            "plain": "km.KeplerMapper().fit_transform(X, projection=PCA(2)); per R in "
                     f"{list(RESOLUTIONS)}: mapper.map(lens, X, cover=km.Cover(n_cubes=R, "
                     f"perc_overlap={OVERLAP}), clusterer=DBSCAN(eps, min_samples="
                     f"{MIN_SAMPLES}))",
        },
        "eps_rule": f"{EPS_QUANTILE} quantile of the distance to the {K}th nearest neighbour, "
                    "in each path's clustering space: ours over its landmarks in the 16-d PCA "
                    "space (Settings defaults); plain over a seeded sample of min(n, "
                    f"{EPS_SAMPLE}) query rows against all n rows in the full d-dim space "
                    "(timed as the plain path's 'eps' phase)",
        "seconds_measure": "wall time of the mapping after the vectors exist (both paths: "
                           "lens/PCA, eps, every resolution), in the measured process",
        "peak_measure": "VmHWM of the measured process (interpreter + imports + vectors + "
                        "mapping); rss_after_imports_bytes and vectors_bytes given per run",
        **compared,
        "total_seconds": round(time.perf_counter() - t0, 1),
        "loadavg": {"start": load_start, "end": os.getloadavg()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "scikit_learn": sklearn.__version__,
                    "kmapper": kmapper.__version__, "platform": platform.platform()},
    }
    print(table(result["rows"]))
    default = not (args.small or args.sizes or args.d)
    out = args.out or (RESULTS if default else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
