"""Activation: load plugins, build the registry, and arm each adapter for its upstream package.

``activate()`` is idempotent; ``deactivate()`` undoes every adapter's changes, so upstream is
exactly as it was before (tested). A failing adapter is undone and reported by ``doctor``; it
never breaks the import of the upstream package it adapts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import pluggy

from . import import_watch
from .plugins import (Pending, hook_problems, in_load_order, is_initializing,
                      load_plugins, new_plugin_manager, register_checked, skip)
from .registry import Registry, RegistryError, collect
from .specs import Adapter

log = logging.getLogger(__name__)
_lock = threading.RLock()


@dataclass
class State:
    pm: pluggy.PluginManager
    registry: Registry
    # The built-in and third-party plugins registered, in load order (the app plugins, always
    # loaded, are not listed).
    plugin_names: list[str]
    adapter_errors: dict[str, str] = field(default_factory=dict)
    # Installed plugins left out, and why (failed to import, hook raised, malformed record,
    # conflict with an earlier plugin); and problems that did not stop a plugin from loading.
    skipped_plugins: dict[str, str] = field(default_factory=dict)
    plugin_warnings: list[str] = field(default_factory=list)


_state: State | None = None
# Plugins whose module was still being imported when qwen_interp activated (a plugin
# imported before qwen_interp imports it mid-way): registered at the next import or lookup.
_pending: Pending = []


def is_active() -> bool:
    return _state is not None


def state() -> State:
    """The active state (activating on first use)."""
    activate()
    _register_pending()
    assert _state is not None
    return _state


def registry() -> Registry:
    return state().registry


def plugin_manager() -> pluggy.PluginManager:
    return state().pm


def activate() -> None:
    """Load the plugins and arm their adapters. A second call changes nothing."""
    with _lock:
        if _state is not None:
            return
        pm = new_plugin_manager()
        skipped: dict[str, str] = {}
        warnings: list[str] = []
        names = load_plugins(pm, _pending, skipped, warnings)
        reg = _collect_skipping(pm, names, skipped)
        _install(State(pm=pm, registry=reg, plugin_names=names, skipped_plugins=skipped,
                       plugin_warnings=warnings))
        if _pending:
            import_watch.before_any_import(_register_pending)


def _register_pending() -> None:
    """Register pending plugins whose import has finished (and re-arm the adapters)."""
    with _lock:
        if _state is None or not _pending:
            return
        ready = [(name, mod) for name, mod in _pending if not is_initializing(mod)]
        if not ready:
            return
        for item in ready:
            _pending.remove(item)
        if not _pending:
            import_watch.before_any_import(None)
        st = _state
        added = [name for name, mod in ready
                 if register_checked(st.pm, mod, name, st.skipped_plugins, st.plugin_warnings)]
        names = in_load_order([*st.plugin_names, *added])
        reg = _collect_skipping(st.pm, names, st.skipped_plugins, skippable=set(added))
        _reinstall(st, reg, names)


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plugin object (module, class or instance with ``@hookimpl`` functions) at run
    time. Its records take effect at once. If its hooks raise, its records are malformed or
    conflict with another plugin's, or a hook would never be called (a ``@hookimpl`` that
    matches no hook, which pluggy's ``check_pending()`` refuses; a hook function without
    ``@hookimpl``), this raises ``RegistryError`` (naming the plugins) and nothing changes."""
    with _lock:
        st = state()
        if st.pm.is_registered(plugin):
            return
        registered = st.pm.register(plugin, name=name)
        if registered is None:  # pluggy's answer for a name someone blocked
            raise RegistryError(f"plugin name {name!r} is blocked", (str(name),))
        try:
            problems = hook_problems(st.pm, plugin)
            if problems:
                raise RegistryError(f"plugin {registered!r}: {'; '.join(problems)}",
                                    (registered,))
            reg = collect(st.pm)
        except Exception:
            st.pm.unregister(plugin)
            raise
        _reinstall(st, reg, [*st.plugin_names, registered])


def unregister_plugin(plugin: object) -> None:
    with _lock:
        st = state()
        if not st.pm.is_registered(plugin):
            return
        name = st.pm.get_name(plugin)
        st.pm.unregister(plugin)
        _reinstall(st, collect(st.pm), [n for n in st.plugin_names if n != name])


def deactivate() -> None:
    """Undo every change made to upstream packages and forget all plugins."""
    global _state
    with _lock:
        if _state is None:
            return
        _disarm(_state)
        _pending.clear()
        import_watch.before_any_import(None)
        _state = None


def _collect_skipping(pm: pluggy.PluginManager, names: list[str], skipped: dict[str, str],
                      skippable: set[str] | None = None) -> Registry:
    """``collect(pm)``, skipping (unregistering, removing from ``names``, reporting) each installed
    plugin that ``collect`` blames, until the rest collect cleanly. ``skippable`` limits whom
    (default: ``names``); an error blaming no skippable plugin is raised."""
    while True:
        try:
            return collect(pm)
        except RegistryError as exc:
            culprit = next((p for p in reversed(exc.plugins)
                            if p in (names if skippable is None else skippable)), None)
            if culprit is None:
                raise
            pm.unregister(name=culprit)
            if culprit in names:
                names.remove(culprit)
            if skippable is not None:
                skippable.discard(culprit)
            skip(skipped, culprit, str(exc))


def _install(st: State) -> None:
    global _state
    _state = st
    for adapter in st.registry.adapters.values():
        import_watch.when_imported(adapter.module, _activator(adapter, st))


def _reinstall(old: State, reg: Registry, names: list[str]) -> None:
    _disarm(old)
    _install(State(pm=old.pm, registry=reg, plugin_names=names,
                   skipped_plugins=old.skipped_plugins, plugin_warnings=old.plugin_warnings))


def _disarm(st: State) -> None:
    import_watch.cancel_all()
    for adapter in reversed(list(st.registry.adapters.values())):
        try:
            adapter.deactivate()
        except Exception as exc:  # noqa: BLE001 - one adapter must not keep the others armed
            st.adapter_errors[adapter.name] = f"deactivate: {type(exc).__name__}: {exc}"
            log.warning("qwen-interp adapter %r failed to deactivate: %s", adapter.name, exc)


def _activator(adapter: Adapter, st: State) -> Callable[[], None]:
    def run() -> None:
        try:
            adapter.activate(st.registry)
        except Exception as exc:  # noqa: BLE001 - upstream import must not break because of us
            try:
                adapter.deactivate()
            except Exception:  # noqa: BLE001 - reported with the activation error below
                log.exception("qwen-interp adapter %r failed to undo itself", adapter.name)
            st.adapter_errors[adapter.name] = f"{type(exc).__name__}: {exc}"
            log.warning("qwen-interp adapter %r failed and was undone: %s", adapter.name, exc)
    return run
