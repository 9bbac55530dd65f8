"""Reading Qwen-Scope ``layer{n}.sae.pt`` files safely, validating them, and caching them as
safetensors.

Only torch and safetensors are needed here (no SAELens), so the cache also serves the CLI.

- Safe: pickles are read with ``torch.load(weights_only=True)`` (explicit, so neither an old
  torch default nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn it off). A pickle that would
  call anything but torch's tensor rebuilders is refused before any of it runs.
- Validated: one :class:`SAEFileError` names the file and says what was expected.
- Cached: the first read converts the layer to SAELens's orientation (``W_enc`` (d_model, d_sae),
  ``W_dec`` (d_sae, d_model)) in a safetensors file; every read returns tensors memory-mapped
  from that file (no private copy; pages come from the OS page cache, shared between processes).
  Writes go to a temporary file that is renamed into place, under an advisory lock, so
  concurrent processes never see a partial file and convert a layer once; a temporary left by a
  killed conversion is deleted by the next one (``qwen_interp.atomic``).
- Checked: each cache file records a hash of its tensors and its source's size and mtime. The
  hash is verified on the first load of the file in each process (and again if the file changes
  on disk): +0.02-0.06 s on the first load of a 537 MB layer (page-cached), nothing after. A
  damaged file is reported once, deleted and converted again from the source; never returned.

Cache location: ``$QWEN_INTERP_CACHE/saes``, else ``$XDG_CACHE_HOME/qwen-interp/saes``, else
``~/.cache/qwen-interp/saes``. ``QWEN_INTERP_SAE_CACHE=0`` reads the pickle every time (still
safely). Cache files are only ever replaced by rename; delete them (``rm``), never truncate or
rewrite one in place: a process that has it mapped would get SIGBUS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qwen_interp import settings
from qwen_interp.atomic import (HASH_NAME, digest, file_lock, lock_path, remove_leftovers,
                                replace_file)
from qwen_interp.errors import CheckpointError
from qwen_interp.paths import cache_root  # one root for every plugin

ENV_SAE_CACHE_ENABLED = settings.SAE_CACHE.name
CACHE_FORMAT = "qwen-interp-sae-v2"  # v2: tensor hash and source fingerprint in the metadata
log = logging.getLogger(__name__)
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec")


class SAEFileError(CheckpointError):
    """A Qwen-Scope SAE file is unreadable, truncated, or not the SAE that was expected."""


class UnsafeCheckpointError(SAEFileError):
    """A checkpoint's pickle would run code; it was refused and nothing in it ran."""


class OutdatedCacheFile(SAEFileError):
    """A cache file written by an earlier version (converted again; nothing is wrong)."""


@dataclass(frozen=True)
class Expected:
    """What a layer file must hold: shapes, plus a label for messages (``release layer n``)."""

    d_model: int
    d_sae: int
    label: str
    # Other known (label, d_model, d_sae): named in the error when the file matches one of them.
    others: tuple[tuple[str, int, int], ...] = ()

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes in the Qwen-Scope (pickle) orientation."""
        return {"W_enc": (self.d_sae, self.d_model), "W_dec": (self.d_model, self.d_sae),
                "b_enc": (self.d_sae,), "b_dec": (self.d_model,)}

    @property
    def approx_bytes(self) -> int:
        return 4 * (2 * self.d_model * self.d_sae + self.d_model + self.d_sae)


# --- cache location --------------------------------------------------------------------------


def sae_cache_dir() -> Path:
    return cache_root() / "saes"


def cache_enabled() -> bool:
    return settings.SAE_CACHE.get()


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text).strip("-") or "sae"


def source_key(path: str | os.PathLike) -> str:
    """Identity of a source file: its real path (a Hub blob is named by its hash), size, mtime.
    A changed or re-downloaded file gets a new key, so a stale conversion is never used."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def cache_path(source: str | os.PathLike, group: str) -> Path:
    """Where the conversion of ``source`` lives: ``<cache>/saes/<group>/<stem>-<key>.safetensors``.
    ``group`` is the repo id, or the local folder's name."""
    stem = Path(source).name.removesuffix(".pt").removesuffix(".sae")
    return sae_cache_dir() / _safe_name(group) / f"{stem}-{source_key(source)}.safetensors"


def cached_conversions(group: str, stem: str) -> list[Path]:
    """Existing conversions of ``stem`` (e.g. ``layer3``) in ``group``, newest first."""
    folder = sae_cache_dir() / _safe_name(group)
    found = [p for p in folder.glob(f"{stem}-*.safetensors")
             if re.fullmatch(rf"{re.escape(stem)}-[0-9a-f]{{16}}\.safetensors", p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


# --- safe pickle reading ---------------------------------------------------------------------
def load_pickle_safely(path: str | os.PathLike, expected: Expected):
    """``torch.load(path, weights_only=True)``, with errors that name the file and the cause."""
    import torch
    path = Path(path)
    size = path.stat().st_size
    use_mmap = zipfile.is_zipfile(path)  # mmap needs torch's zip format; saves a copy on convert
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only" in text.lower() or "weights_only" in text:
            culprit = re.search(r"(?:unsupported GLOBAL|Unsupported global:? GLOBAL) [\w.]+", text)
            what = (f"the pickle would run code ({culprit.group(0).strip()})" if culprit else
                    "the pickle holds something other than plain tensors (or is corrupt)")
            raise UnsafeCheckpointError(
                f"{path}: refused: {what}; nothing in it was executed. A Qwen-Scope layer file "
                f"holds only the tensors {', '.join(KEYS)}. Do not load this file with "
                f"weights_only=False.") from None
        raise _truncated(path, size, expected, exc) from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise _truncated(path, size, expected, exc) from None


def _truncated(path: Path, size: int, expected: Expected, exc: Exception) -> SAEFileError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SAEFileError(
        f"{path}: not a complete PyTorch checkpoint ({first}). It has {size:,} bytes; a complete "
        f"{expected.label} layer (d_model {expected.d_model}, d_sae {expected.d_sae}, fp32) has "
        f"about {expected.approx_bytes:,}. The file is truncated or corrupt: delete it and "
        f"download it again.")


def validate(raw, path: str | os.PathLike, expected: Expected) -> None:
    """Check a loaded layer dict against ``expected`` (Qwen-Scope orientation)."""
    import torch
    if not isinstance(raw, dict):
        raise SAEFileError(f"{path}: expected a dict of tensors {list(KEYS)} "
                           f"for {expected.label}, got {type(raw).__name__}")
    missing = [k for k in KEYS if k not in raw]
    extra = sorted(str(k) for k in raw if k not in KEYS)
    if missing or extra:
        raise SAEFileError(f"{path}: expected exactly the tensors {list(KEYS)} for "
                           f"{expected.label}; missing {missing}, unexpected {extra}")
    bad = [k for k in KEYS if not (isinstance(raw[k], torch.Tensor) and raw[k].is_floating_point())]
    if bad:
        raise SAEFileError(f"{path}: {bad} are not floating-point tensors ({expected.label})")
    got = {k: tuple(raw[k].shape) for k in KEYS}
    if got != expected.shapes:
        raise SAEFileError(_shape_message(path, expected, got))


def _shape_message(path, expected: Expected, got: dict) -> str:
    want = ", ".join(f"{k} {v}" for k, v in expected.shapes.items())
    have = ", ".join(f"{k} {v}" for k, v in got.items())
    msg = (f"{path}: wrong shapes for {expected.label} (d_model {expected.d_model}, "
           f"d_sae {expected.d_sae}): expected {want}; got {have}.")
    w_enc = got["W_enc"]
    d_sae, d_model = w_enc if len(w_enc) == 2 else (None, None)
    matches = [label for label, dm, ds in expected.others if (dm, ds) == (d_model, d_sae)]
    if matches:
        msg += f" These are the shapes of {', '.join(matches)}: the file belongs to another model."
    return msg


def to_saelens_layout(raw) -> dict:
    """Qwen-Scope orientation to SAELens's: W_enc (d_model, d_sae), W_dec (d_sae, d_model), fp32."""
    import torch
    return {"W_enc": raw["W_enc"].T.to(torch.float32).contiguous(),
            "W_dec": raw["W_dec"].T.to(torch.float32).contiguous(),
            "b_enc": raw["b_enc"].to(torch.float32).contiguous(),
            "b_dec": raw["b_dec"].to(torch.float32).contiguous()}


# --- cache -----------------------------------------------------------------------------------
# Cache files whose tensor hash matched in this process: path -> os.stat identity then. A file
# changed on disk since (other size, mtime or inode) is hashed again.
_verified: dict[str, tuple[int, int, int, int]] = {}


def _stat_id(path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _source_fingerprint(source) -> dict[str, str]:
    st = os.stat(source)
    return {"source_size": str(st.st_size), "source_mtime_ns": str(st.st_mtime_ns)}


def _tensor_digest(tensors: dict) -> str:
    return digest(tensors[k].numpy() for k in KEYS)  # contiguous fp32: hashed without a copy


def open_cached(path: Path, expected: Expected, source=None) -> dict:
    """Tensors of a cached conversion, memory-mapped (copy-on-write: edits never reach the file),
    checked against the hash recorded at conversion (first load in this process) and, if
    ``source`` is given, against the source's size and mtime."""
    from safetensors import safe_open
    want = {"W_enc": (expected.d_model, expected.d_sae),
            "W_dec": (expected.d_sae, expected.d_model),
            "b_enc": (expected.d_sae,), "b_dec": (expected.d_model,)}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("format") != CACHE_FORMAT and str(meta.get("format")).startswith(
                "qwen-interp-sae-"):
            raise OutdatedCacheFile(f"{path}: a {meta['format']} cache file")
        if meta.get("format") != CACHE_FORMAT or set(f.keys()) != set(KEYS):
            raise SAEFileError(f"{path}: not a {CACHE_FORMAT} cache file")
        out = {k: f.get_tensor(k) for k in KEYS}
    got = {k: tuple(v.shape) for k, v in out.items()}
    if got != want:
        raise SAEFileError(f"{path}: cached shapes {got} differ from {expected.label}'s {want}")
    if source is not None and any(meta.get(k) != v for k, v in _source_fingerprint(source).items()):
        raise SAEFileError(f"{path}: converted from another version of {source} (size/mtime "
                           f"{meta.get('source_size')}/{meta.get('source_mtime_ns')})")
    stamp = _stat_id(path)
    if _verified.get(str(path)) != stamp:
        if _tensor_digest(out) != meta.get(HASH_NAME):
            raise SAEFileError(f"{path}: the tensors do not match the {HASH_NAME} hash recorded "
                               f"when the file was written (the file was changed on disk)")
        _verified[str(path)] = stamp
    return out


def write_atomic(tensors: dict, target: Path, source: str) -> None:
    """Write a safetensors file next to ``target`` and rename it into place."""
    from safetensors.torch import save_file
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        save_file(tensors, tmp, metadata={"format": CACHE_FORMAT, "source": str(source),
                                          HASH_NAME: _tensor_digest(tensors),
                                          **_source_fingerprint(source)})
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    replace_file(target, write)
    _verified[str(target)] = _stat_id(target)  # we hashed exactly what we wrote


def read_layer(source: str | os.PathLike, expected: Expected, group: str | None = None,
               use_cache: bool | None = None) -> dict:
    """A validated layer in SAELens orientation: from the cache (memory-mapped), converting
    ``source`` on the first read. ``group`` names the cache folder (repo id or folder name)."""
    source = Path(source)
    if not source.is_file():
        raise SAEFileError(f"{source}: no such file (expected {expected.label})")
    if not (cache_enabled() if use_cache is None else use_cache):
        raw = load_pickle_safely(source, expected)
        validate(raw, source, expected)
        return to_saelens_layout(raw)
    target = cache_path(source, group or source.parent.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock_path(target)):
        remove_leftovers(target.parent, own=target)  # of conversions killed earlier
        if target.exists():
            try:
                return open_cached(target, expected, source)
            except OutdatedCacheFile:
                log.info("qwen-interp: converting %s again (cache format now %s)", source,
                         CACHE_FORMAT)
            except Exception as exc:  # noqa: BLE001 - damage is rebuilt from the source, once
                log.warning("qwen-interp: cached SAE layer is damaged: %s; deleted, converting %s "
                            "again", exc, source)
            target.unlink(missing_ok=True)
        raw = load_pickle_safely(source, expected)
        validate(raw, source, expected)
        converted = to_saelens_layout(raw)
        del raw
        write_atomic(converted, target, str(source))
        del converted  # the returned tensors are the mapped file, not this copy
    return open_cached(target, expected, source)


def others_from(releases: Iterable) -> tuple[tuple[str, int, int], ...]:
    """(label, d_model, d_sae) of releases, for the "belongs to another model" hint."""
    return tuple((f"{r.release} ({r.model_repo_id})", r.d_model, r.d_sae) for r in releases)
