"""The base of every error qwen-interp raises for a bad checkpoint or a checkpoint/model mismatch,
so that users can catch them all at once. Each plugin raises a subclass that names the file."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint is unreadable, incomplete, unsafe, or does not fit its model. Raised before
    any large allocation; caches and registries are left as they were."""


class InputError(ValueError):
    """A value a user passed (a prompt, a dtype, a model name) is not one qwen-interp or the tool
    it adapts can use. Raised before the model runs or anything large is loaded; the message
    names the value and what was expected."""
