"""Where qwen-interp keeps what it converts or builds: ``$QWEN_INTERP_CACHE``, else
``$XDG_CACHE_HOME/qwen-interp``, else ``~/.cache/qwen-interp``. Each plugin uses a subfolder."""

from __future__ import annotations

import os
from pathlib import Path

from . import settings

ENV_CACHE = settings.CACHE.name


def cache_root() -> Path:
    configured = settings.CACHE.get()
    if configured is not None:
        return configured
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "qwen-interp"
