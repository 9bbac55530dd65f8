"""Run a callback once a module has been imported, whenever that happens.

``import qwen_interp`` stays cheap: an adapter for TransformerLens runs when ``transformer_lens``
is imported (or at once if it already was), so import order never matters and tools that are
not used are never imported.
"""

from __future__ import annotations

import copy
import importlib.abc
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec

_lock = threading.RLock()


class _Finder(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.callbacks: dict[str, list[Callable[[], None]]] = {}
        self.before_any_import: Callable[[], None] | None = None
        self._busy: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: types.ModuleType | None = None) -> ModuleSpec | None:
        if self.before_any_import is not None and "*" not in self._busy:
            self._busy.add("*")
            try:
                self.before_any_import()
            finally:
                self._busy.discard("*")
        if fullname not in self.callbacks or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return spec
        # A copy of this one spec's loader whose exec_module notifies us afterwards; the loader
        # class and other modules' loaders are untouched.
        original = spec.loader
        watched = copy.copy(original)
        finder = self

        def exec_module(module: types.ModuleType) -> None:
            original.exec_module(module)
            finder.fire(fullname)

        # This copy's own exec_module, shadowing the class's: the other loaders stay as they are.
        watched.exec_module = exec_module  # type: ignore[method-assign]
        spec.loader = watched
        return spec

    def fire(self, name: str) -> None:
        with _lock:
            callbacks = self.callbacks.pop(name, [])
            _uninstall_if_idle()
        for cb in callbacks:
            cb()


_finder = _Finder()


def when_imported(module: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` now if ``module`` is imported, else right after it is."""
    with _lock:
        pending = module not in sys.modules
        if pending:
            _finder.callbacks.setdefault(module, []).append(callback)
            _install()
    if not pending:
        callback()


def _install() -> None:
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)


def _uninstall_if_idle() -> None:
    if not _finder.callbacks and _finder.before_any_import is None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


def before_any_import(callback: Callable[[], None] | None) -> None:
    """Run ``callback`` at the start of every import until set back to None."""
    with _lock:
        _finder.before_any_import = callback
        if callback is None:
            _uninstall_if_idle()
        else:
            _install()


def pending() -> list[str]:
    with _lock:
        return sorted(_finder.callbacks)


def cancel_all() -> None:
    with _lock:
        _finder.callbacks.clear()
        _uninstall_if_idle()
