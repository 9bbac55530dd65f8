"""The plugin manager: which plugins load, in what order, and which are refused.

- **Built-in plugins** load from :data:`BUILTIN_PLUGINS`, an explicit list of module names in
  this file (as ``llm`` and ``datasette`` do with their ``DEFAULT_PLUGINS``), in that order;
- **third-party plugins** load through the ``qwen_interp`` entry-point group, after the
  built-ins, by entry-point name;

``QWEN_INTERP_PLUGINS`` limits the built-in and third-party plugins, as ``LLM_LOAD_PLUGINS``
does for llm: a comma-separated list of plugin names (a built-in's short name, or an entry-point
name); ``QWEN_INTERP_PLUGINS=""`` loads none. Unset: load all.

Registration order matters twice: pluggy calls the most recently registered plugin first
(``tryfirst`` / ``trylast`` aside), and where two plugins register different records under one
key, the later-registered one is refused. ``docs/hooks.md`` has the rules.

One broken installed plugin never breaks ``import qwen_interp``: a plugin that fails to import,
that pluggy refuses (a hook with unknown arguments, a misspelled hook name: pluggy's
``check_pending()``), or whose records cannot be used is skipped; what went wrong is logged and
kept for ``qwen-interp doctor``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs, settings

ENTRY_POINT_GROUP = "qwen_interp"
ENV_LOAD_PLUGINS = settings.PLUGINS.name

# Built-in plugins, registered first and in this order: the name QWEN_INTERP_PLUGINS uses ->
# the module. Strings, imported with importlib: the core imports no plugin.
BUILTIN_PLUGINS = {
    "qwen3": "qwen_interp_qwen3",
    "qwen35": "qwen_interp_qwen35",
    "transformerlens": "qwen_interp_transformerlens",
    "circuit_tracer": "qwen_interp_circuit_tracer",
    "saelens": "qwen_interp_saelens",
}

# Plugins whose module was still being imported at load: (name, module).
Pending = list[tuple[str, ModuleType]]

log = logging.getLogger(__name__)


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("qwen_interp")
    pm.add_hookspecs(hookspecs)
    return pm


def allowed_plugin_names() -> set[str] | None:
    """Names allowed by ``QWEN_INTERP_PLUGINS``, or None when every plugin may load."""
    names = settings.PLUGINS.get()
    return None if names is None else set(names)


def is_initializing(module: ModuleType) -> bool:
    """True while ``module`` is still executing its import (e.g. it imported qwen_interp, which
    is now loading the plugins): its hook functions are not defined yet."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def in_load_order(names: Iterable[str]) -> list[str]:
    """``names`` sorted as they load: the built-ins in list order, then the rest by name."""
    builtins = list(BUILTIN_PLUGINS)
    return sorted(names, key=lambda n: (0, builtins.index(n), "") if n in BUILTIN_PLUGINS
                  else (1, 0, n))


def hook_spec_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith("register_"))


def unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """pluggy's ``check_pending()`` rule, naming ``plugin``: each of its ``@hookimpl`` functions
    whose name matches no hook (a typo) and that is not marked ``optionalhook``, with a
    did-you-mean hint. ``check_pending()`` stops at the first such function of any plugin."""
    try:
        pm.check_pending()
        return []
    except pluggy.PluginValidationError:
        pass
    specs = hook_spec_names()
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        own = [impl for impl in caller.get_hookimpls() if impl.plugin is plugin]
        if caller.has_spec() or all(impl.optionalhook for impl in own):
            continue
        close = difflib.get_close_matches(caller.name, specs, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; hooks: {', '.join(specs)}"
        problems.append(f"@hookimpl {caller.name!r} matches no qwen-interp hook, so it is "
                        f"never called{hint}")
    return problems


def undecorated_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Functions of ``plugin`` named like a hook but without ``@hookimpl``: pluggy ignores them."""
    return [f"{name!r} lacks the @qwen_interp.hookimpl decorator, so it is never called"
            for name in hook_spec_names() if callable(getattr(plugin, name, None))
            and pm.parse_hookimpl_opts(plugin, name) is None]


def hook_problems(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Every hook implementation of a registered ``plugin`` that pluggy would never call."""
    return [*unknown_hooks(pm, plugin), *undecorated_hooks(pm, plugin)]


def load_plugins(pm: pluggy.PluginManager, pending: Pending | None = None,
                 skipped: dict[str, str] | None = None,
                 warnings: list[str] | None = None) -> list[str]:
    """Register every allowed built-in plugin, then every allowed third-party plugin; return
    the names of the built-in and third-party plugins registered.

    A plugin that fails to import, that pluggy refuses, or that implements a hook no hookspec
    has goes to ``skipped`` (name -> why) and is logged; a function named like a hook without
    ``@hookimpl``, or a name in ``QWEN_INTERP_PLUGINS`` that no plugin has, goes to
    ``warnings``: one broken plugin must not break ``import qwen_interp``. A plugin module still
    being imported goes to ``pending`` as ``(name, module)``, to be registered once its import
    has finished.
    """
    skipped = {} if skipped is None else skipped
    warnings = [] if warnings is None else warnings
    allowed = allowed_plugin_names()
    third_party = third_party_entry_points(skipped)
    installed = sorted({*BUILTIN_PLUGINS, *(ep.name for ep in third_party)})
    unknown = sorted((allowed or set()) - set(installed))
    if unknown:
        warn(warnings, f"{ENV_LOAD_PLUGINS} names {', '.join(map(repr, unknown))}, but no "
                       f"installed plugin has that name; installed: "
                       f"{', '.join(installed) or 'none'}")
    sources = [(name, _importer(module)) for name, module in BUILTIN_PLUGINS.items()]
    sources += [(ep.name, ep.load) for ep in third_party]
    return [name for name, load in sources if (allowed is None or name in allowed)
            and _load(pm, name, load, pending, skipped, warnings)]


def third_party_entry_points(skipped: dict[str, str]) -> list[importlib.metadata.EntryPoint]:
    """The ``qwen_interp`` entry points, by name, less the built-ins: an entry point naming a
    built-in module is left out (the metadata of an install from before the built-ins loaded
    from the list), and one taking a built-in's name for another module is skipped."""
    eps = []
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
                     key=lambda ep: ep.name):
        if ep.value in BUILTIN_PLUGINS.values():
            continue
        if ep.name in BUILTIN_PLUGINS:
            skip(skipped, ep.name, f"entry point {ep.name} = {ep.value}: {ep.name!r} is the "
                                   f"name of a built-in plugin; rename the entry point")
            continue
        eps.append(ep)
    return eps


def _importer(module: str) -> Callable[[], Any]:
    return lambda: importlib.import_module(module)


def _load(pm: pluggy.PluginManager, name: str, load: Callable[[], Any], pending: Pending | None,
          skipped: dict[str, str], warnings: list[str]) -> bool:
    if pm.get_plugin(name) is not None:
        return False
    try:
        plugin: ModuleType = load()
    except Exception as exc:  # noqa: BLE001 - reported by `qwen-interp doctor`
        skip(skipped, name, f"failed to load: {type(exc).__name__}: {exc}")
        return False
    if is_initializing(plugin) and pending is not None:
        pending.append((name, plugin))
        return False
    return register_checked(pm, plugin, name, skipped, warnings)


def register_checked(pm: pluggy.PluginManager, plugin: object, name: str, skipped: dict[str, str],
                     warnings: list[str]) -> bool:
    """Register an installed plugin. If pluggy refuses it (a hook with arguments no hook has, an
    object registered twice) or it implements a hook no hookspec has (``check_pending()``), it
    is skipped and nothing of it stays registered. A function named like a hook but without
    ``@hookimpl`` is warned about."""
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # noqa: BLE001 - a refused plugin is skipped, not a crash
        skip(skipped, name, f"refused by pluggy: {type(exc).__name__}: {exc}")
        return False
    errors, undecorated = unknown_hooks(pm, plugin), undecorated_hooks(pm, plugin)
    if errors:  # the same message register_plugin() raises at run time
        pm.unregister(plugin)
        skip(skipped, name, f"plugin {name!r}: {'; '.join([*errors, *undecorated])}")
        return False
    for problem in undecorated:
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
