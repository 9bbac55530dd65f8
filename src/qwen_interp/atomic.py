"""Atomic cache writes, shared by every cache qwen-interp keeps (converted CLTs, converted SAE
layers, the offline Hub): build in a private temporary folder and rename it into place, so a
reader never sees a half-written entry; a lock file makes a second process wait for the first
instead of building the same thing twice (where locking is unavailable, the rename alone still
keeps readers safe)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def file_lock(path: Path):
    """Advisory exclusive lock on ``path`` (POSIX ``flock``); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_folder(final: Path, build: Callable[[Path], None], lock: Path | None = None) -> Path:
    """``final``, calling ``build(tmp_folder)`` first if it does not exist yet. ``lock`` defaults
    to a dotfile next to ``final``. If ``build`` raises, nothing is left behind."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(lock or final.parent / f".{final.name}.lock"):
        if final.is_dir():  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.building-", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
