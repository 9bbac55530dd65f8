"""Activation: load plugins, build the registry, and arm each adapter for its upstream package.

``activate()`` is idempotent; ``deactivate()`` undoes every adapter's changes, so upstream is
exactly as it was before (tested).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pluggy

from . import import_watch
from .plugins import load_entry_point_plugins, new_plugin_manager
from .registry import Registry, collect

_lock = threading.RLock()


@dataclass
class State:
    pm: pluggy.PluginManager
    registry: Registry
    plugin_names: list[str]


_state: State | None = None


def is_active() -> bool:
    return _state is not None


def state() -> State:
    """The active state (activating on first use)."""
    activate()
    assert _state is not None
    return _state


def registry() -> Registry:
    return state().registry


def plugin_manager() -> pluggy.PluginManager:
    return state().pm


def activate(extra_plugins: tuple = ()) -> None:
    """Load plugins and arm adapters. A second call is a no-op unless ``extra_plugins`` are given."""
    global _state
    with _lock:
        if _state is not None and not extra_plugins:
            return
        if _state is None:
            pm = new_plugin_manager()
            names = load_entry_point_plugins(pm)
        else:
            # Adding a plugin at run time: rebuild cleanly so adapters see the new records.
            pm, names = _state.pm, _state.plugin_names
            _deactivate_adapters(_state)
        for plugin in extra_plugins:
            if not pm.is_registered(plugin):
                pm.register(plugin)
                names = [*names, pm.get_name(plugin)]
        reg = collect(pm)
        _state = State(pm=pm, registry=reg, plugin_names=names)
        for adapter in reg.adapters.values():
            import_watch.when_imported(adapter.module, _activator(adapter, reg))


def _activator(adapter, reg):
    def run() -> None:
        adapter.activate(reg)
    return run


def register_plugin(plugin) -> None:
    """Register a plugin object (module or instance with ``@hookimpl`` functions) at run time."""
    activate(extra_plugins=(plugin,))


def unregister_plugin(plugin) -> None:
    global _state
    with _lock:
        if _state is None or not _state.pm.is_registered(plugin):
            return
        name = _state.pm.get_name(plugin)
        pm = _state.pm
        _deactivate_adapters(_state)
        pm.unregister(plugin)
        names = [n for n in _state.plugin_names if n != name]
        _state = None
        reg = collect(pm)
        _state = State(pm=pm, registry=reg, plugin_names=names)
        for adapter in reg.adapters.values():
            import_watch.when_imported(adapter.module, _activator(adapter, reg))


def _deactivate_adapters(st: State) -> None:
    import_watch.cancel_all()
    for adapter in reversed(list(st.registry.adapters.values())):
        adapter.deactivate()


def deactivate() -> None:
    """Undo every change made to upstream packages and forget all plugins."""
    global _state
    with _lock:
        if _state is None:
            return
        _deactivate_adapters(_state)
        _state = None
