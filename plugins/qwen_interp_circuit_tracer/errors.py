"""The one exception this plugin raises for bad transcoder files."""

from __future__ import annotations

from qwen_interp.errors import CheckpointError


class TranscoderValidationError(CheckpointError):
    """A transcoder checkpoint is incomplete, inconsistent or does not fit its model.

    Raised before any large allocation and before anything is written to the conversion cache.
    ``path`` is the offending file (or folder), ``tensor`` the tensor or config key, if any.
    """

    def __init__(self, path, tensor: str | None, problem: str) -> None:
        self.path = str(path)
        self.tensor = tensor
        self.problem = problem
        where = f"{self.path}" + (f" [{tensor}]" if tensor else "")
        super().__init__(f"{where}: {problem}")
