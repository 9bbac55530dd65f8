"""The plugin manager. Built-in and third-party plugins load the same way: through the
``qwen_interp`` entry-point group.

``QWEN_INTERP_PLUGINS`` limits autoloading, as ``LLM_LOAD_PLUGINS`` does for llm: a comma-separated
list of entry-point names to load (``QWEN_INTERP_PLUGINS=""`` loads none). Unset: load all.

One broken installed plugin never breaks ``import qwen_interp``: a plugin that fails to import or
to register is skipped; what went wrong is logged and kept for ``qwen-interp doctor``.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import os
import re
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


def _load_order(ep) -> tuple:
    """This package's built-in plugins first, then the rest by name: where a third-party plugin
    conflicts with a built-in one, the third-party plugin is the later one, and is skipped."""
    dist = getattr(getattr(ep, "dist", None), "name", None) or ""
    return (re.sub(r"[-_.]+", "-", dist).lower() != "qwen-interp", ep.name)


def hook_problems(pm: pluggy.PluginManager, plugin) -> list[str]:
    """Hook implementations of ``plugin`` that pluggy would never call: a ``@hookimpl`` whose name
    matches no hook (a typo; pluggy itself reports it only from ``check_pending()``), and a
    function named like a hook but without ``@hookimpl``."""
    specs = sorted(name for name in dir(hookspecs) if name.startswith("register_"))
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            close = difflib.get_close_matches(caller.name, specs, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; hooks: {', '.join(specs)}"
            problems.append(f"@hookimpl {caller.name!r} matches no qwen-interp hook, so it is "
                            f"never called{hint}")
    for name in specs:
        if callable(getattr(plugin, name, None)) and pm.parse_hookimpl_opts(plugin, name) is None:
            problems.append(f"{name!r} lacks the @qwen_interp.hookimpl decorator, so it is "
                            f"never called")
    return problems


def load_entry_point_plugins(pm: pluggy.PluginManager, pending: list | None = None,
                             skipped: dict[str, str] | None = None,
                             warnings: list[str] | None = None) -> list[str]:
    """Register every allowed plugin of the entry-point group; return the names registered.

    A plugin that fails to import or to register goes to ``skipped`` (name -> why) and is
    logged; a plugin with a hook pluggy would never call, or a name in ``QWEN_INTERP_PLUGINS``
    that no installed plugin has, goes to ``warnings``: one broken plugin must not break
    ``import qwen_interp``. A plugin module still being imported goes to ``pending`` as
    ``(name, module)``, to be registered once its import has finished.
    """
    skipped = {} if skipped is None else skipped
    warnings = [] if warnings is None else warnings
    allowed = allowed_plugin_names()
    eps = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_load_order)
    unknown = sorted((allowed or set()) - {ep.name for ep in eps})
    if unknown:
        warn(warnings, f"{ENV_LOAD_PLUGINS} names {', '.join(map(repr, unknown))}, but no "
                       f"installed plugin has that name; installed: "
                       f"{', '.join(sorted({ep.name for ep in eps})) or 'none'}")
    loaded = []
    for ep in eps:
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin: ModuleType = ep.load()
        except Exception as exc:  # noqa: BLE001 - reported by `qwen-interp doctor`
            skip(skipped, ep.name, f"failed to load: {type(exc).__name__}: {exc}")
            continue
        if is_initializing(plugin) and pending is not None:
            pending.append((ep.name, plugin))
            continue
        if register_checked(pm, plugin, ep.name, skipped, warnings):
            loaded.append(ep.name)
    return loaded


def register_checked(pm: pluggy.PluginManager, plugin, name: str, skipped: dict[str, str],
                     warnings: list[str]) -> bool:
    """Register an installed plugin; if pluggy refuses it (a hook with arguments no hook has, an
    object registered twice), skip it. Hooks that would never be called are warned about."""
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - a refused plugin is skipped, not a crash
        skip(skipped, name, f"refused by pluggy: {type(exc).__name__}: {exc}")
        return False
    for problem in hook_problems(pm, plugin):
        warn(warnings, f"plugin {name!r}: {problem}")
    return True


def skip(skipped: dict[str, str], name: str, why: str) -> None:
    why = " ".join(why.split())  # one line per plugin in logs and doctor (pluggy's span lines)
    skipped[name] = why
    log.warning("qwen-interp plugin %r skipped: %s", name, why)


def warn(warnings: list[str], text: str) -> None:
    # logging, not warnings.warn: under `python -W error` a warning would break the import.
    warnings.append(text)
    log.warning("qwen-interp: %s", text)
