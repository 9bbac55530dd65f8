"""The conversion cache: native checkpoints converted once into the circuit-tracer layout.

Location: ``$QWEN_INTERP_CACHE/clt`` if set, else ``~/.cache/qwen-interp/clt``. One folder per
source, named ``<source name>-<key>``; the key hashes the source files' names, sizes and mtimes
and the converter version, so a changed checkpoint converts again. A folder is complete iff it
exists: it is built in a private temporary folder next to it and renamed into place. A lock file
makes a second process wait for the first instead of converting the same 40 GB twice; if locking
is unavailable the rename alone keeps readers safe.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

from qwen_interp import paths
from qwen_interp.atomic import build_folder

CONVERTER_VERSION = "1"


def cache_root() -> Path:
    return paths.cache_root() / "clt"


def source_key(folder: Path, files: list[str]) -> str:
    h = hashlib.sha256(CONVERTER_VERSION.encode())
    for name in sorted(files):
        st = (folder / name).stat()
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def cached_build(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The cache folder for (name, key), calling ``build(tmp_folder)`` first if it is absent."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-")[-80:] or "clt"
    return build_folder(cache_root() / f"{slug}-{key}", build)
