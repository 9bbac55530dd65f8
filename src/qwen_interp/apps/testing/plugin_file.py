"""Test a qwen-interp plugin from its one file, without installing it: load the file as a module
and register it for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from types import ModuleType


def load_plugin_file(path: str | os.PathLike, name: str | None = None) -> ModuleType:
    """The module defined by the Python file ``path`` (named ``name``, default: the file's stem).
    A plugin is any module with ``@qwen_interp.hookimpl`` functions."""
    path = os.fspath(path)
    name = name or os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{path!r} is not a Python file a plugin can be loaded from")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[object]:
    """``plugin`` registered with qwen-interp inside the block (its records in
    ``qwen_interp.registry()``, the adapters re-armed), unregistered afterwards."""
    import qwen_interp
    qwen_interp.register_plugin(plugin, name=name)
    try:
        yield plugin
    finally:
        qwen_interp.unregister_plugin(plugin)
