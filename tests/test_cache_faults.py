"""Cache faults: a cache file changed on disk is detected, reported once, deleted and rebuilt
from its source, never returned; a conversion killed with SIGKILL leaves nothing behind for
long: the next process deletes its temporary and its lock file (but never a live build's).

Kills are real: a fresh interpreter converts a layer (or a CLT) large enough to take a while,
the test waits until its temporary is on disk and sends SIGKILL.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


LOG = "qwen_interp_saelens.files"


# --- SAE cache ----------------------------------------------------------------------------------
def sae_source(folder: Path, layer: int, d_model: int = 256, d_sae: int = 4096) -> tuple:
    from qwen_interp.apps.testing.sae_hub import qwen_scope_tensors, write_qwen_scope_layer
    tensors = qwen_scope_tensors(d_model, d_sae, seed=layer)
    return write_qwen_scope_layer(folder / f"layer{layer}.sae.pt", tensors), tensors


def saelens_layout(tensors: dict) -> dict:
    return {"W_enc": tensors["W_enc"].T, "W_dec": tensors["W_dec"].T,
            "b_enc": tensors["b_enc"], "b_dec": tensors["b_dec"]}


def corrupt_in_place(path: Path, keep_mtime: bool) -> None:
    """Overwrite 4 KiB in the middle of ``path``: same size, same inode."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        chunk = fh.read(4096)
        fh.seek(st.st_size // 2)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    if keep_mtime:  # hides the write from size/mtime checks: only the content hash sees it
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size


LOAD_SAE = """
import hashlib, sys
from qwen_interp_saelens.files import Expected, read_layer
d_model, d_sae = int(sys.argv[2]), int(sys.argv[3])
state = read_layer(sys.argv[1], Expected(d_model, d_sae, "fault test"), group="faults")
print(hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest())
"""


def sha(tensors: dict) -> str:
    import hashlib
    return hashlib.sha256(b"".join(tensors[k].contiguous().numpy().tobytes()
                                   for k in sorted(tensors))).hexdigest()


def run_script(script: str, args, cache: Path, wait: bool):
    """``script`` in a fresh interpreter on ``cache``: finished (asserted to succeed) or, with
    ``wait=False``, still running (to be killed)."""
    cmd = [sys.executable, "-c", script, *map(str, args)]
    env = {**os.environ, "QWEN_INTERP_CACHE": str(cache)}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def load_sae(source: Path, cache: Path, d_model: int = 256, d_sae: int = 4096,
             wait: bool = True):
    return run_script(LOAD_SAE, (source, d_model, d_sae), cache, wait)


def damaged_message(entry: Path, source: Path) -> str:
    return (f"qwen-interp: cached SAE layer is damaged: {entry}: the tensors do not match the "
            f"xxh3_128 hash recorded when the file was written (the file was changed on disk); "
            f"deleted, converting {source} again")


@pytest.mark.subprocess
@pytest.mark.parametrize("keep_mtime", [True, False], ids=["mtime-restored", "mtime-changed"])
def test_sae_cache_corrupted_in_place_is_rebuilt_in_a_new_process(tmp_path, keep_mtime):
    cache = tmp_path / "cache"
    source, tensors = sae_source(tmp_path, 0)
    want = sha(saelens_layout(tensors))
    assert load_sae(source, cache).stdout.split()[-1] == want
    (entry,) = (cache / "saes" / "faults").iterdir()
    corrupt_in_place(entry, keep_mtime)
    proc = load_sae(source, cache)
    assert proc.stdout.split()[-1] == want  # the source's values, not the damaged file's
    assert proc.stderr.count("is damaged") == 1
    assert damaged_message(entry, source) in proc.stderr
    again = load_sae(source, cache)  # the rebuilt file is good: no second report
    assert again.stdout.split()[-1] == want and "damaged" not in again.stderr
    assert [p.name for p in (cache / "saes" / "faults").iterdir()] == [entry.name]


def test_sae_cache_changed_after_its_first_load_in_this_process(tmp_path, monkeypatch, caplog):
    from qwen_interp_saelens.files import Expected, read_layer
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "cache"))
    source, tensors = sae_source(tmp_path, 1)
    expected = Expected(256, 4096, "fault test")
    read_layer(source, expected, group="faults")  # converts (and trusts what it wrote)
    (entry,) = (tmp_path / "cache" / "saes" / "faults").iterdir()
    corrupt_in_place(entry, keep_mtime=False)  # new mtime: hashed again in this process
    with caplog.at_level(logging.WARNING, logger=LOG):
        state = read_layer(source, expected, group="faults")
    assert [r.getMessage() for r in caplog.records] == [damaged_message(entry, source)]
    for key, value in saelens_layout(tensors).items():
        assert torch.equal(state[key], value)


# --- SIGKILL leftovers ---------------------------------------------------------------------------
def wait_for(pattern: str, folder: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """The first path matching ``pattern`` in ``folder``, polling fast."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the conversion ended before it could be killed:\n{proc.stderr.read()}")
        time.sleep(0.001)
    pytest.fail(f"no {pattern} in {folder} after {timeout} s")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


HOLD_LOCK = """
import sys, time
from pathlib import Path
from qwen_interp.atomic import file_lock, lock_path, temp_file
final = Path(sys.argv[1])
with file_lock(lock_path(final)):     # what a live conversion of ``final`` holds
    tmp = temp_file(final)
    tmp.write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkilled_sae_conversion_leaves_nothing_after_the_next_run(tmp_path):
    from qwen_interp_saelens.files import cache_path
    cache = tmp_path / "cache"
    folder = cache / "saes" / "faults"
    # A real-size layer (Qwen3-1.7B, 32k features: 537 MB): its temporary lives for about half
    # a second (hash, write, fsync), long enough to be killed in between.
    big, big_tensors = sae_source(tmp_path, 0, 2048, 32768)
    small, small_tensors = sae_source(tmp_path, 1)
    proc = load_sae(big, cache, 2048, 32768, wait=False)
    temp = wait_for(".layer0-*.safetensors.tmp-*", folder, proc)
    kill(proc)
    lock = folder / f".{temp.name.split('.tmp-')[0][1:]}.lock"
    assert temp.exists() and lock.exists()  # the leftovers a killed conversion used to keep

    # A live conversion of another entry in the same folder (its lock held by a running process)
    # must survive the cleanup; the dead one's temporary and lock must not.
    live_final = folder / "layer9-0000000000000000.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(live_final)],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "QWEN_INTERP_PLUGINS": ""})
    try:
        live_temp = Path(holder.stdout.readline().strip())
        assert load_sae(small, cache).stdout.split()[-1] == sha(saelens_layout(small_tensors))
        assert not temp.exists() and not lock.exists()
        assert live_temp.exists() and (folder / f".{live_final.name}.lock").exists()
    finally:
        kill(holder)

    # The killed layer converts again; only complete cache files remain.
    assert load_sae(big, cache, 2048, 32768).stdout.split()[-1] == sha(saelens_layout(big_tensors))
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([cache_path(big, "faults").name, cache_path(small, "faults").name])


# --- CLT conversion cache ------------------------------------------------------------------------
CONVERT_CLT = """
import json, sys, torch, qwen_interp
from circuit_tracer.utils.hf_utils import load_transcoder_from_hub
clt, _ = load_transcoder_from_hub(sys.argv[1], device=torch.device("cpu"), lazy_decoder=False)
x = torch.randn(clt.n_layers, 3, clt.d_model, generator=torch.Generator().manual_seed(0))
print(json.dumps({"path": clt.clt_path, "sum": float(clt.decode(clt.encode(x).to_sparse()).sum())}))
"""


def native_clt(tmp_path: Path, n_layers: int, d_model: int, d_latent: int) -> Path:
    from qwen_interp.apps.testing.clt_native import random_clt, write_native
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"hidden_size": d_model,
                                                   "num_hidden_layers": n_layers}))
    return write_native(tmp_path / "src", random_clt(n_layers, d_model, d_latent, seed=5),
                        base_model_name=str(model))


def convert_clt(src: Path, cache: Path, wait: bool = True):
    proc = run_script(CONVERT_CLT, (src,), cache, wait)
    if not wait:
        return proc
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkilled_clt_conversion_is_cleaned_and_converted_again(tmp_path):
    # 6 layers x 8192 features x d_model 256: ~230 MB to write, long enough to be killed.
    src = native_clt(tmp_path, 6, 256, 8192)
    cache = tmp_path / "cache"
    proc = convert_clt(src, cache, wait=False)
    temp = wait_for(".*.tmp-*", cache / "clt", proc)
    while not any(temp.iterdir()):  # killed mid-conversion: some files written
        time.sleep(0.001)
    kill(proc)
    entry = temp.name[1:].split(".tmp-")[0]
    assert temp.is_dir() and (cache / "clt" / f".{entry}.lock").exists()
    _, result = convert_clt(src, cache)
    assert sorted(p.name for p in (cache / "clt").iterdir()) == [entry]  # no temp, no lock
    assert result["path"] == str(cache / "clt" / entry)
    assert (cache / "clt" / entry / ".qwen-interp-manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.subprocess
def test_clt_cache_changed_on_disk_is_rebuilt_and_touch_is_not(tmp_path):
    src = native_clt(tmp_path, 2, 32, 64)
    cache = tmp_path / "cache"
    _, first = convert_clt(src, cache)
    folder = Path(first["path"])
    manifest = json.loads((folder / ".qwen-interp-manifest.json").read_text())["files"]
    victim = next(folder / name for name in sorted(manifest) if name.startswith("W_dec"))

    # A touch (mtime changes, content does not): hashed, accepted, recorded; no rebuild.
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    proc, second = convert_clt(src, cache)
    assert second == first and "damaged" not in proc.stderr
    recorded = json.loads((folder / ".qwen-interp-manifest.json").read_text())["files"]
    assert recorded[victim.name]["mtime_ns"] == victim.stat().st_mtime_ns

    # Changed in place at the same size: reported once, rebuilt, the same transcoder again.
    corrupt_in_place(victim, keep_mtime=False)
    proc, third = convert_clt(src, cache)
    assert third == first
    assert proc.stderr.count("damaged") == 1
    assert (f"qwen-interp: cached {folder} is damaged ({victim.name} was changed on disk (its "
            f"xxh3_128 hash differs)); deleted, rebuilding it") in proc.stderr
    assert sorted(p.name for p in (cache / "clt").iterdir()) == [folder.name]
