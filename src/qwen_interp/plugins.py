"""The plugin manager. Built-in and third-party plugins load the same way: through the
``qwen_interp`` entry-point group.

``QWEN_INTERP_PLUGINS`` limits autoloading, as ``LLM_LOAD_PLUGINS`` does for llm: a comma-separated
list of entry-point names to load (``QWEN_INTERP_PLUGINS=""`` loads none). Unset: load all.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from types import ModuleType

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "qwen_interp"
ENV_LOAD_PLUGINS = "QWEN_INTERP_PLUGINS"

log = logging.getLogger(__name__)


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("qwen_interp")
    pm.add_hookspecs(hookspecs)
    return pm


def allowed_plugin_names() -> set[str] | None:
    """Names allowed by ``QWEN_INTERP_PLUGINS``, or None when every plugin may load."""
    raw = os.environ.get(ENV_LOAD_PLUGINS)
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def is_initializing(module: ModuleType) -> bool:
    """True while ``module`` is still executing its import (e.g. it imported qwen_interp, which
    is now loading the plugins): its hook functions are not defined yet."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def load_entry_point_plugins(pm: pluggy.PluginManager,
                             pending: list | None = None) -> list[str]:
    """Register every allowed plugin of the entry-point group; return the names registered.

    A plugin that fails to import is logged and skipped: one broken plugin must not break
    ``import qwen_interp``. A plugin module still being imported goes to ``pending`` as
    ``(name, module)``, to be registered once its import has finished.
    """
    allowed = allowed_plugin_names()
    loaded = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin: ModuleType = ep.load()
        except Exception as exc:  # noqa: BLE001 - reported by `qwen-interp doctor`
            log.warning("qwen-interp plugin %r failed to load: %s", ep.name, exc)
            continue
        if is_initializing(plugin) and pending is not None:
            pending.append((ep.name, plugin))
            continue
        pm.register(plugin, name=ep.name)
        loaded.append(ep.name)
    return loaded
