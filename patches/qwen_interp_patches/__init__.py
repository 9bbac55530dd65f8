"""Upstream patches as generators (see patches/README.md).

A :class:`Patch` edits a copy of an upstream source tree: ``apply(root, registry)`` returns
``{relative path: new text}`` for the files it changes, computed from the pristine files under
``root`` (the upstream repository root, or an unpacked release) and qwen-interp's registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class UpstreamLayoutChanged(RuntimeError):
    """The upstream file no longer has the text a patch anchors on: the patch needs updating."""


@dataclass(frozen=True)
class Patch:
    name: str
    title: str
    description: str
    apply: Callable[[Path, object], dict[str, str]]


@dataclass(frozen=True)
class Project:
    distribution: str  # PyPI name
    package: str  # top-level import package inside the repository
    pinned: str
    patches: tuple[Patch, ...]


def insert_after_last(text: str, marker: str, block: str, path: str) -> str:
    """Insert ``block`` after the last line containing ``marker``."""
    lines = text.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if marker in line]
    if not hits:
        raise UpstreamLayoutChanged(f"{path}: no line contains {marker!r}")
    i = hits[-1] + 1
    return "".join(lines[:i]) + block + "".join(lines[i:])


def projects() -> dict[str, Project]:
    from . import circuit_tracer, sae_lens, transformer_lens
    return {p.distribution: p for p in (transformer_lens.PROJECT, circuit_tracer.PROJECT,
                                        sae_lens.PROJECT)}
