"""Benchmark: loading one real-size Qwen-Scope layer (d_model 2048 x d_sae 32768, fp32, 537 MB)
with ``SAE.from_pretrained("qwen-scope-3-1.7b-base-w32k-l50", "layer0")``:

- plain:  SAELens's own ``qwen_scope`` loader (qwen-interp deactivated): torch.load of the pickle,
          then transposed copies;
- first:  qwen-interp, empty cache: safe read + conversion to safetensors (once per layer);
- cached: qwen-interp, second and later loads: memory-mapped safetensors.

Each measurement runs in a fresh interpreter (imports are not timed); the layer file is written
once into a private offline HF cache and is in the OS page cache for every run (warm for both).
Peak memory = rise of the process's peak RSS during the load (VmHWM reset through
/proc/self/clear_refs just before); "private" = anonymous memory the process holds after the
load, and after one encode that touches every encoder weight (the cache's mapped pages are
file-backed: shared page cache, not a copy).

    python benchmarks/sae_cache_load.py [--repeats 5] [--workdir DIR]

The report is printed and appended as one JSON line to $OUT/sae_cache_load.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import import_sae_lens, jsonl_logger, use_checkout_plugins

RELEASE = "qwen-scope-3-1.7b-base-w32k-l50"
PLUGINS = ("qwen_interp_qwen3", "qwen_interp_transformerlens", "qwen_interp_circuit_tracer",
           "qwen_interp_saelens")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(mode: str) -> None:
    import torch
    import_sae_lens()  # the GPU machine has no wandb
    use_checkout_plugins(*PLUGINS)  # the GPU machine has the checkout, not an installed package
    import qwen_interp
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders
    if mode == "plain":
        qwen_interp.deactivate()  # SAELens exactly as shipped
        assert loaders.NAMED_PRETRAINED_SAE_LOADERS["qwen_scope"] is \
            loaders.qwen_scope_sae_huggingface_loader
    else:
        loader = loaders.NAMED_PRETRAINED_SAE_LOADERS["qwen_scope"]
        assert type(loader).__name__ == "QwenScopeLoader"
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    rss0, anon0, file0 = _status_kb("VmRSS"), _status_kb("RssAnon"), _status_kb("RssFile")
    t0 = time.perf_counter()
    sae = SAE.from_pretrained(RELEASE, "layer0")
    seconds = time.perf_counter() - t0
    hwm1, anon1 = _status_kb("VmHWM"), _status_kb("RssAnon")
    assert tuple(sae.W_enc.shape) == (2048, 32768)
    with torch.no_grad():  # touch every encoder weight: mapped pages come in from the page cache
        sae.encode(torch.randn(8, 2048))
    anon2, file2 = _status_kb("RssAnon"), _status_kb("RssFile")
    checksum = float(sae.W_dec[:4].sum() + sae.b_enc.sum())
    print(json.dumps({"mode": mode, "seconds": seconds, "peak_rise_mb": (hwm1 - rss0) / 1024,
                      "private_after_mb": (anon1 - anon0) / 1024,
                      "private_after_encode_mb": (anon2 - anon0) / 1024,
                      "file_backed_after_encode_mb": (file2 - file0) / 1024,
                      "checksum": checksum}))


def run_child(mode: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child", default=None)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="qwen-sae-bench-"))
    env = {**os.environ, "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1",
           "QWEN_INTERP_CACHE": str(work / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    os.environ.update({k: env[k] for k in ("HF_HOME", "HF_HUB_OFFLINE")})
    import_sae_lens()
    registry = use_checkout_plugins(*PLUGINS)
    from qwen_interp.apps.testing.hub import OfflineHub
    from qwen_interp.apps.testing.sae_hub import qwen_scope_snapshot
    rel = registry.sae_releases[RELEASE]
    snap = qwen_scope_snapshot(OfflineHub(work / "hf"), rel, [0])
    size = (snap / "layer0.sae.pt").stat().st_size

    first = run_child("first", env)  # empty cache: converts
    runs = {"plain": [], "cached": []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for mode in runs:
            runs[mode].append(run_child(mode, env))
    assert len({r["checksum"] for rs in runs.values() for r in rs} | {first["checksum"]}) == 1

    def med(mode, key):
        return statistics.median(r[key] for r in runs[mode])

    import torch
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                   f"{platform.platform()}, python {platform.python_version()}, "
                   f"torch {torch.__version__}, torch threads {torch.get_num_threads()}",
        "layer_file_bytes": size, "repeats": args.repeats,
        "plain_s": med("plain", "seconds"), "cached_s": med("cached", "seconds"),
        "first_s": first["seconds"],
        "plain_peak_rise_mb": med("plain", "peak_rise_mb"),
        "cached_peak_rise_mb": med("cached", "peak_rise_mb"),
        "first_peak_rise_mb": first["peak_rise_mb"],
        "plain_private_after_mb": med("plain", "private_after_mb"),
        "cached_private_after_mb": med("cached", "private_after_mb"),
        "plain_private_after_encode_mb": med("plain", "private_after_encode_mb"),
        "cached_private_after_encode_mb": med("cached", "private_after_encode_mb"),
        "cached_file_backed_after_encode_mb": med("cached", "file_backed_after_encode_mb"),
    }
    report["speedup"] = report["plain_s"] / report["cached_s"]
    # Peak RSS is counted in pages; a rise below 1 MB is reported as 1 MB (ratio is then a floor).
    report["peak_memory_ratio"] = (report["plain_peak_rise_mb"]
                                   / max(report["cached_peak_rise_mb"], 1.0))
    jsonl_logger("sae_cache_load.jsonl")(**report)


if __name__ == "__main__":
    main()
