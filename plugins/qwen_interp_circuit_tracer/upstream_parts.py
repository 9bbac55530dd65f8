"""Which parts of this plugin circuit-tracer already ships (qwen-interp's upstream patches in
``upstream_patches*.py`` in this plugin), so the plugin stands down for them instead of applying
them twice. Detection reads only what is installed: a module's presence, a method's source."""

from __future__ import annotations

import importlib
import importlib.util
import inspect

TOPK_MODULE = "circuit_tracer.transcoder.topk_cross_layer_transcoder"
NATIVE_MODULE = "circuit_tracer.transcoder.bluelight"
# The statement the first-position patch puts at the top of each string-taking method.
FIRST_POSITION_LINE = "inputs = self.ensure_tokenized(inputs)"


def upstream_module(name: str):
    """The installed circuit-tracer's module ``name``, or None if this release lacks it."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def tokenizes_strings(method) -> bool:
    """Whether upstream ``method`` already tokenizes a string input like ``attribute()``."""
    try:
        return FIRST_POSITION_LINE in inspect.getsource(method)
    except (OSError, TypeError):  # no source (frozen, C): assume it does not
        return False
