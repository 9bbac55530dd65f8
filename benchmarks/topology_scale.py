"""Topology at the scale of a full CLT: a multiresolution Mapper map of 573,440 x 2,048 random
float32 decoder vectors (28 layers x 20,480 features of the 1.7B CLT, d_model 2,048), on CPU.

Measures wall time of each phase and the peak resident memory (``VmHWM`` of /proc/self/status,
falling back to ``resource.getrusage``'s ``ru_maxrss``) against the vectors' own size
(573,440 x 2,048 x 4 bytes = 4.70 GB). Goal (issue #20): under 15 minutes, at most 2x.

    python benchmarks/topology_scale.py            # full size, writes benchmarks/results/
    python benchmarks/topology_scale.py --small    # 28 x 512 features x 256 dims, seconds

The vectors are generated in place, chunk by chunk, into one preallocated array (no temporary
copy); everything after that is :func:`qwen_interp.apps.topology.build.map_features` with the
command's defaults, then the JSON and PNG export.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAYERS, WIDTH, D_MODEL = 28, 20_480, 2_048
RESULTS = Path(__file__).resolve().parent / "results" / "topology_scale.json"


def peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def random_vectors(n: int, d: int, seed: int = 0, rows: int = 16_384) -> np.ndarray:
    x = np.empty((n, d), dtype=np.float32)
    rng = np.random.default_rng(seed)
    for start in range(0, n, rows):
        rng.standard_normal(out=x[start:start + rows], dtype=np.float32)
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="28 x 512 x 256: a smoke run")
    parser.add_argument("--width", type=int, default=None, help="features per layer")
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--out", default=None, help="results JSON (default: "
                        "benchmarks/results/topology_scale.json for the full size, else none)")
    args = parser.parse_args(argv)
    width = args.width or (512 if args.small else WIDTH)
    d_model = args.d_model or (256 if args.small else D_MODEL)
    from qwen_interp.apps.topology.build import Settings, map_features
    from qwen_interp.apps.topology.export import write_map
    from qwen_interp.apps.topology.labels import label_nodes
    from qwen_interp.apps.topology.vectors import from_array
    n = LAYERS * width
    rss_start = peak_rss_bytes()
    t0 = time.perf_counter()
    x = random_vectors(n, d_model)
    t1 = time.perf_counter()
    vectors = from_array(x, layers=range(LAYERS), name="random", source="decoder")
    settings = Settings()
    tmap = map_features(vectors, settings)
    t2 = time.perf_counter()
    label_nodes(tmap)
    with tempfile.TemporaryDirectory() as out:
        json_path, png_path = write_map(tmap, out, "random-decoder")
        sizes = {"json_bytes": json_path.stat().st_size, "png_bytes": png_path.stat().st_size}
    t3 = time.perf_counter()
    peak = peak_rss_bytes()
    own = x.nbytes
    result = {
        "benchmark": "topology_scale", "vectors": [n, d_model], "dtype": "float32",
        "vectors_bytes": own, "vectors_gb": round(own / 1e9, 3),
        "settings": tmap.settings_dict(),
        "seconds": {"generate": round(t1 - t0, 1), **tmap.seconds,
                    "labels_and_export": round(t3 - t2, 1),
                    "map_total": round(t3 - t1, 1)},
        "peak_rss_bytes": peak, "peak_rss_gb": round(peak / 1e9, 3),
        "peak_over_vectors": round(peak / own, 3),
        "rss_before_vectors_gb": round(rss_start / 1e9, 3),
        "levels": [{"resolution": lv.resolution, "nodes": len(lv.nodes), "edges": len(lv.edges),
                    "components": lv.components, "cycle_rank": lv.cycle_rank,
                    "all_contained": all(lv.contained)} for lv in tmap.levels],
        **sizes,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "platform": platform.platform()},
        "goal": {"seconds": 900, "peak_over_vectors": 2.0},
        "met": {"time": (t3 - t1) < 900, "memory": peak <= 2 * own},
    }
    print(json.dumps(result, indent=1))
    out = args.out or (None if (args.small or args.width or args.d_model) else RESULTS)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
