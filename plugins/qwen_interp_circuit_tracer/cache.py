"""The conversion cache: native checkpoints converted once into the circuit-tracer layout.

Location: ``$QWEN_INTERP_CACHE/clt`` if set, else ``~/.cache/qwen-interp/clt``. One folder per
source, named ``<source name>-<key>``; the key hashes the source files' names, sizes and mtimes
and the converter version, so a changed checkpoint converts again. A folder is complete iff it
exists: it is built in a private temporary folder next to it and renamed into place. A lock file
makes a second process wait for the first instead of converting the same 40 GB twice; if locking
is unavailable the rename alone keeps readers safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from qwen_interp import paths

CONVERTER_VERSION = "1"


def cache_root() -> Path:
    return paths.cache_root() / "clt"


def source_key(folder: Path, files: list[str]) -> str:
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    for name in sorted(files):
        st = (folder / name).stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(lock_path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic rename still protects readers
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_build(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The cache folder for (name, key), calling ``build(tmp_folder)`` first if it is absent."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")[-80:] or "clt"
    root = cache_root()
    final = root / f"{slug}-{key}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{final.name}.lock"):
        if final.is_dir():  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=root))
        try:
            build(tmp)
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
