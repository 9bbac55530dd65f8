"""Where qwen-interp keeps what it converts or builds: ``$QWEN_INTERP_CACHE``, else
``$XDG_CACHE_HOME/qwen-interp``, else ``~/.cache/qwen-interp``. Each plugin uses a subfolder."""

from __future__ import annotations

import os
from pathlib import Path

ENV_CACHE = "QWEN_INTERP_CACHE"


def cache_root() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "qwen-interp"
