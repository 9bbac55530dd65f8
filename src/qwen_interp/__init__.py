"""qwen-interp: Qwen3 / Qwen3.5 support for TransformerLens, circuit-tracer and SAELens.

``import qwen_interp`` loads the plugins and arms their adapters; each adapter patches its
upstream package when that package is imported (or at once if it already is).
``qwen_interp.deactivate()`` restores every upstream package exactly.
"""

from __future__ import annotations

import importlib.metadata

from .activation import (activate, deactivate, is_active, plugin_manager, register_plugin,
                         registry, unregister_plugin)
from .hookspecs import hookimpl

__all__ = ["__version__", "activate", "deactivate", "hookimpl", "is_active", "plugin_manager",
           "register_plugin", "registry", "unregister_plugin"]

try:
    __version__ = importlib.metadata.version("qwen-interp")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

activate()
