"""Loading Qwen-Scope layer files: refusal of code-running pickles, validation errors, the
safetensors cache (memory-mapped, atomic, safe under concurrent processes), local folders and the
CLI listing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import qwen_interp

MODEL = "Qwen/Qwen3-1.7B-Base"
REAL = "qwen-scope-3-1.7b-base-w32k-l50"


class Payload:
    """A pickle that runs a shell command when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh qwen-interp cache per test."""
    monkeypatch.setenv("QWEN_INTERP_CACHE", str(tmp_path / "qwen-cache"))
    monkeypatch.delenv("QWEN_INTERP_SAE_CACHE", raising=False)
    return tmp_path / "qwen-cache"


@pytest.fixture(scope="module")
def tiny(qwen_offline_hub, qwen_registry):
    """Tiny releases for the small 1.7B and 8B stand-ins, plus one whose layer0 is malicious."""
    from qwen_interp.specs import SAERelease
    from qwen_interp.apps.testing.sae_hub import (SAEReleasePlugin, qwen_scope_snapshot,
                                             tiny_release, write_qwen_scope_layer)
    small = tiny_release(qwen_registry.model(MODEL))
    other = tiny_release(qwen_registry.model("Qwen/Qwen3-8B-Base"))
    evil = SAERelease("qwen-interp-test-evil", "qwen-interp-test/SAE-Res-Evil-W256-L0_8", MODEL,
                      d_model=small.d_model, d_sae=256, k=8, n_layers=3)
    marker = Path(qwen_offline_hub.hf_home) / "evil-ran"
    qwen_offline_hub.model(qwen_registry.model(MODEL))
    qwen_scope_snapshot(qwen_offline_hub, small, range(3))
    # Every layer, as test_sae_activations builds this repo id: a snapshot's first build stays
    # for the session, and under pytest-xdist either file may run first.
    qwen_scope_snapshot(qwen_offline_hub, other, range(3))
    qwen_offline_hub.snapshot(evil.repo_id, lambda folder: write_qwen_scope_layer(
        folder / "layer0.sae.pt", {"W_enc": Payload(marker), "W_dec": torch.zeros(1)}))
    plugin = SAEReleasePlugin([small, other, evil])
    qwen_interp.register_plugin(plugin)
    yield {"small": small, "other": other, "evil": evil, "marker": marker}
    qwen_interp.unregister_plugin(plugin)


def snapshot_file(hub, release, layer=0) -> Path:
    return hub.snapshot_path(release.repo_id) / f"layer{layer}.sae.pt"


def local_copy(hub, release, dest: Path, name: str | None = None) -> Path:
    folder = dest / (name or release.repo_id.split("/")[-1])
    shutil.copytree(hub.snapshot_path(release.repo_id), folder)
    return folder


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of ``path`` (Linux /proc/self/maps)."""
    ptr = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == str(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= ptr < end:
                return True
    return False


# --- safety ------------------------------------------------------------------------------------
def test_malicious_pickle_refused_by_from_pretrained(tiny, cache, monkeypatch):
    import qwen_interp_saelens as q
    from sae_lens import SAE
    # Even with torch's escape hatch set, the explicit weights_only=True holds.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(q.UnsafeCheckpointError) as err:
        SAE.from_pretrained(tiny["evil"].release, "layer0")
    msg = str(err.value)
    assert "layer0.sae.pt" in msg and "refused: the pickle would run code" in msg
    assert "system" in msg  # names the callable it would have run
    assert not tiny["marker"].exists()  # the payload never ran
    assert not list(cache.rglob("*.safetensors"))  # and nothing was cached


def test_malicious_pickle_refused_from_local_dir(tmp_path, qwen_offline_hub):
    import qwen_interp_saelens as q
    from qwen_interp.apps.testing.sae_hub import write_qwen_scope_layer
    marker = tmp_path / "ran"
    folder = tmp_path / "mine"
    folder.mkdir()
    write_qwen_scope_layer(folder / "layer2.sae.pt", {"W_enc": Payload(marker)})
    with pytest.raises(q.UnsafeCheckpointError, match=r"mine/layer2\.sae\.pt: refused"):
        q.load_sae_from_dir(folder, 2, k=8)
    assert not marker.exists()
    # Control: the same file does run its payload when loaded unsafely, so the test can fail.
    torch.load(folder / "layer2.sae.pt", weights_only=False)
    assert marker.exists()


# --- validation --------------------------------------------------------------------------------
def test_truncated_file_names_file_and_expected_size(tmp_path, tiny, qwen_offline_hub):
    import qwen_interp_saelens as q
    folder = local_copy(qwen_offline_hub, tiny["small"], tmp_path)
    f = folder / "layer1.sae.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(q.SAEFileError) as err:
        q.load_sae_from_dir(folder, 1)
    msg = str(err.value)
    assert str(f) in msg and "truncated" in msg
    assert f"{tiny['small'].release} layer1" in msg and "d_model 64, d_sae 256" in msg


def test_wrong_shapes_for_release(tmp_path, tiny, qwen_offline_hub):
    """A tiny file in a folder named after the real release: expected shapes are the release's."""
    import qwen_interp_saelens as q
    folder = local_copy(qwen_offline_hub, tiny["small"], tmp_path,
                        name="SAE-Res-Qwen3-1.7B-Base-W32K-L0_50")
    with pytest.raises(q.SAEFileError) as err:
        q.load_sae_from_dir(folder, 0)
    msg = str(err.value)
    assert str(folder / "layer0.sae.pt") in msg and f"wrong shapes for {REAL} layer0" in msg
    assert "W_enc (32768, 2048)" in msg and "got W_enc (256, 64)" in msg


def test_file_of_another_model_is_named(tmp_path, tiny, qwen_offline_hub):
    import qwen_interp_saelens as q
    folder = local_copy(qwen_offline_hub, tiny["small"], tmp_path)
    shutil.copyfile(snapshot_file(qwen_offline_hub, tiny["other"]), folder / "layer0.sae.pt")
    with pytest.raises(q.SAEFileError) as err:
        q.load_sae_from_dir(folder, 0)
    msg = str(err.value)
    assert "wrong shapes" in msg and tiny["other"].release in msg
    assert "Qwen/Qwen3-8B-Base" in msg and "belongs to another model" in msg


def test_missing_tensor_and_non_dict(tmp_path, tiny):
    import qwen_interp_saelens as q
    from qwen_interp.apps.testing.sae_hub import qwen_scope_tensors, write_qwen_scope_layer
    folder = tmp_path / tiny["small"].repo_id.split("/")[-1]
    folder.mkdir()
    tensors = qwen_scope_tensors(64, 256, seed=0)
    del tensors["b_dec"]
    write_qwen_scope_layer(folder / "layer0.sae.pt", tensors)
    with pytest.raises(q.SAEFileError, match=r"missing \['b_dec'\]"):
        q.load_sae_from_dir(folder, 0)
    torch.save([torch.zeros(3)], folder / "layer1.sae.pt")
    with pytest.raises(q.SAEFileError, match="expected a dict of tensors"):
        q.load_sae_from_dir(folder, 1)


def test_sae_refused_on_wrong_model(tiny):
    import qwen_interp_saelens as q
    from sae_lens import SAE, HookedSAETransformer
    model = HookedSAETransformer.from_pretrained_no_processing(MODEL, device="cpu")
    wider = SAE.from_pretrained(tiny["other"].release, "layer0")
    with pytest.raises(q.SAEModelMismatchError, match="d_model 64"):
        q.check_sae_fits_model(wider, model)
    same_width = SAE.from_pretrained(tiny["small"].release, "layer0")
    q.check_sae_fits_model(same_width, model)
    same_width.cfg.metadata.model_name = "Qwen/Qwen3-30B-A3B-Base"
    with pytest.raises(q.SAEModelMismatchError, match="used with Qwen/Qwen3-1.7B-Base"):
        q.check_sae_fits_model(same_width, model)


# --- cache -------------------------------------------------------------------------------------
def test_cache_first_and_second_load(tiny, cache, qwen_offline_hub, monkeypatch):
    """The first load converts once; later loads read no pickle and are memory-mapped from the
    safetensors file; the tensors equal the raw file's."""
    import qwen_interp_saelens.files as files
    from sae_lens import SAE
    rel = tiny["small"]
    calls = []
    real_load = files.load_pickle_safely
    monkeypatch.setattr(files, "load_pickle_safely",
                        lambda *a, **k: calls.append(a) or real_load(*a, **k))

    first = SAE.from_pretrained(rel.release, "layer2")
    converted = sorted(cache.rglob("*.safetensors"))
    assert len(converted) == 1 and len(calls) == 1
    assert converted[0].parent == cache / "saes" / rel.repo_id.replace("/", "--")
    assert converted[0].name.startswith("layer2-")
    second = SAE.from_pretrained(rel.release, "layer2")
    assert len(calls) == 1  # no pickle read the second time
    raw = torch.load(snapshot_file(qwen_offline_hub, rel, 2), weights_only=True)
    for sae in (first, second):
        assert torch.equal(sae.W_enc, raw["W_enc"].T) and torch.equal(sae.W_dec, raw["W_dec"].T)
        assert torch.equal(sae.b_enc, raw["b_enc"]) and torch.equal(sae.b_dec, raw["b_dec"])
        assert mapped_from(sae.W_enc, converted[0]) and mapped_from(sae.W_dec, converted[0])
    assert not [p for p in converted[0].parent.iterdir() if p.suffix == ".tmp"]


def test_cache_follows_source_changes_and_rebuilds_damage(tmp_path, tiny, qwen_offline_hub, cache):
    import qwen_interp_saelens as q
    from qwen_interp.apps.testing.sae_hub import qwen_scope_tensors, write_qwen_scope_layer
    folder = local_copy(qwen_offline_hub, tiny["small"], tmp_path)
    before = q.load_sae_from_dir(folder, 0)
    [entry] = cache.rglob("*.safetensors")
    # Damaged cache entry (a new, short file: truncating the mapped inode in place would pull
    # the pages from under `before`): detected and rebuilt from the source.
    damaged = entry.with_name("damaged")
    damaged.write_bytes(entry.read_bytes()[:1000])
    os.replace(damaged, entry)
    rebuilt = q.load_sae_from_dir(folder, 0)
    assert torch.equal(rebuilt.W_enc, before.W_enc)
    # A changed source gets a new key: the new weights are read, not the stale conversion.
    time.sleep(0.01)
    fresh = qwen_scope_tensors(64, 256, seed=123)
    write_qwen_scope_layer(folder / "layer0.sae.pt", fresh)
    after = q.load_sae_from_dir(folder, 0)
    assert torch.equal(after.W_enc, fresh["W_enc"].T)
    assert len(list(cache.rglob("layer0-*.safetensors"))) == 2


def test_cache_can_be_turned_off(tiny, cache, monkeypatch):
    from sae_lens import SAE
    monkeypatch.setenv("QWEN_INTERP_SAE_CACHE", "0")
    sae = SAE.from_pretrained(tiny["small"].release, "layer1")
    assert sae.W_enc.shape == (64, 256)
    assert not list(cache.rglob("*.safetensors"))


CONCURRENT = r"""
import os, sys, time, hashlib
from pathlib import Path
from qwen_interp_saelens.files import Expected, read_layer
source, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
state = read_layer(source, Expected(256, 4096, "concurrency test"), group="concurrent")
print(hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest())
"""


@pytest.mark.subprocess
def test_cache_safe_under_concurrent_processes(tmp_path, cache):
    from qwen_interp.apps.testing.sae_hub import qwen_scope_tensors, write_qwen_scope_layer
    tensors = qwen_scope_tensors(256, 4096, seed=7)
    source = write_qwen_scope_layer(tmp_path / "layer0.sae.pt", tensors)
    go = tmp_path / "go"
    env = {**os.environ, "QWEN_INTERP_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CONCURRENT), str(source),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    time.sleep(3)  # both interpreters started and waiting
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    digests = {out.strip().splitlines()[-1] for out, _ in outs}
    expected = {"W_dec": tensors["W_dec"].T, "W_enc": tensors["W_enc"].T,
                "b_dec": tensors["b_dec"], "b_enc": tensors["b_enc"]}
    import hashlib
    want = hashlib.sha256(b"".join(expected[k].contiguous().numpy().tobytes()
                                   for k in sorted(expected))).hexdigest()
    assert digests == {want}
    files = sorted(p.name for p in (cache / "saes" / "concurrent").iterdir())
    assert len(files) == 1 and files[0].endswith(".safetensors")  # no temporaries, no lock file


# --- local folders and listing -------------------------------------------------------------------
def test_local_dir_named_after_release(tmp_path, tiny, qwen_offline_hub):
    import qwen_interp_saelens as q
    rel = tiny["small"]
    folder = local_copy(qwen_offline_hub, rel, tmp_path)
    sae = q.load_sae(folder, "layer1")
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (rel.d_model, rel.d_sae, rel.k)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.metadata.model_name == MODEL
    raw = torch.load(folder / "layer1.sae.pt", weights_only=True)
    assert torch.equal(sae.W_dec, raw["W_dec"].T)


def test_local_dir_without_release_needs_k(tmp_path, tiny, qwen_offline_hub):
    import qwen_interp_saelens as q
    folder = local_copy(qwen_offline_hub, tiny["small"], tmp_path, name="my-saes")
    with pytest.raises(ValueError, match="pass release=... or k=..."):
        q.load_sae_from_dir(folder, 0)
    sae = q.load_sae_from_dir(folder, 0, k=4, model_name=MODEL)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (64, 256, 4)
    x = torch.randn(5, 64)
    assert (sae.encode(x) > 0).sum(-1).le(4).all()


def test_list_sae_releases(tiny, cache, qwen_offline_hub):
    import qwen_interp_saelens as q
    from sae_lens import SAE
    listing = {item.release: item for item in q.list_sae_releases()}
    assert {r for r in listing if r.startswith("qwen-scope-")} == {
        r for r in qwen_interp.registry().sae_releases if r.startswith("qwen-scope-")}
    assert len(listing[REAL].layers) == 28
    assert [loc.sae_id for loc in listing[REAL].layers][:2] == ["layer0", "layer1"]

    rel = tiny["small"]
    SAE.from_pretrained(rel.release, "layer1")
    [item] = q.list_sae_releases(release=rel.release)
    by_layer = {loc.layer: loc for loc in item.layers}
    assert by_layer[1].hub_file == str(snapshot_file(qwen_offline_hub, rel, 1))
    assert by_layer[1].cache_file and Path(by_layer[1].cache_file).is_file()
    assert Path(by_layer[1].cache_file).is_relative_to(cache)
    assert by_layer[0].hub_file and by_layer[0].cache_file is None
    assert item.n_cached == 1
    text = q.format_sae_releases([item], verbose=True)
    assert rel.release in text and by_layer[1].cache_file in text and str(cache) in text
    with pytest.raises(KeyError, match="no registered SAE release"):
        q.list_sae_releases(release="nope")
