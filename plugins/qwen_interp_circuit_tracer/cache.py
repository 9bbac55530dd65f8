"""The conversion cache: native checkpoints converted once into the circuit-tracer layout.

Location: ``$QWEN_INTERP_CACHE/clt`` if set, else ``~/.cache/qwen-interp/clt``. One folder per
source, named ``<source name>-<key>``; the key hashes the source files' names, sizes and mtimes
and the converter version, so a changed checkpoint converts again. A folder is complete iff it
exists: it is built in a private temporary folder next to it and renamed into place. A lock file
makes a second process wait for the first instead of converting the same 40 GB twice; if locking
is unavailable the rename alone keeps readers safe. The temporary folder of a conversion that was
killed is deleted by the next conversion (``qwen_interp.atomic``).

Each folder holds a manifest of its files (size, mtime, xxh3-128 hash), written at conversion.
Every use compares sizes and mtimes (a stat per file, free); a file whose mtime changed is
hashed, and a folder whose files changed is reported, deleted and converted again. Hashing every
file on every first use would mean reading tens of GB that the lazy decoder never touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from qwen_interp import paths
from qwen_interp.atomic import HASH_NAME, build_folder, file_digest

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

    def build_and_record(tmp: Path) -> None:
        build(tmp)
        write_manifest(tmp)
    return build_folder(cache_root() / f"{slug}-{key}", build_and_record, check=check_manifest)


MANIFEST = ".qwen-interp-manifest.json"


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path) -> None:
    record = {}
    for path in _files(folder):
        st = path.stat()
        record[path.relative_to(folder).as_posix()] = {
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, HASH_NAME: file_digest(path)}
    tmp = folder / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"hash": HASH_NAME, "files": record}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def check_manifest(folder: Path) -> str | None:
    """What differs between ``folder`` and its manifest, or None. Files whose size and mtime are
    as recorded are trusted; one whose mtime changed is hashed (and re-recorded if unchanged)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its manifest {MANIFEST} is missing or unreadable ({type(exc).__name__})"
    if manifest.get("hash") != HASH_NAME:
        return f"its manifest uses hash {manifest.get('hash')!r}, not {HASH_NAME}"
    touched = False
    for name, want in files.items():
        path = folder / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{name} is missing"
        if st.st_size != want["size"]:
            return f"{name} has {st.st_size:,} bytes, {want['size']:,} when converted"
        if st.st_mtime_ns != want["mtime_ns"]:
            if file_digest(path) != want[HASH_NAME]:
                return f"{name} was changed on disk (its {HASH_NAME} hash differs)"
            want["mtime_ns"], touched = st.st_mtime_ns, True  # touched, not changed
    if touched:  # the caller holds the folder's lock: no other writer
        tmp = folder / f"{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, folder / MANIFEST)
    return None
