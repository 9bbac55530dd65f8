"""Render and apply the upstream patches in ``patches/`` (package ``qwen_interp_patches``)."""

from __future__ import annotations

import difflib
import importlib.metadata
import shutil
import tempfile
from pathlib import Path


def project(distribution: str):
    from qwen_interp_patches import projects
    table = projects()
    try:
        return table[distribution]
    except KeyError:
        raise KeyError(f"no patches for {distribution!r}; known: {sorted(table)}") from None


def copy_released_source(distribution: str, dest: Path) -> Path:
    """Copy the installed release's package files (for a pure-Python wheel: its released source
    and package data) into ``dest``, laid out like the repository root; return ``dest``."""
    proj = project(distribution)
    dist = importlib.metadata.distribution(distribution)
    if dist.version != proj.pinned:
        raise RuntimeError(f"{distribution} {dist.version} is installed; patches target "
                           f"{proj.pinned}: pass a checkout with --against")
    for file in dist.files or []:
        if file.parts[0] == proj.package and file.suffix != ".pyc":
            target = dest / Path(*file.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.locate(), target)
    return dest


def apply(distribution: str, root: Path) -> list[tuple[object, dict[str, tuple[str, str]]]]:
    """Apply every patch, in order, in place to the tree at ``root``.

    Returns each patch with ``{path: (old text, new text)}`` of the files it changed; old text
    is None for a file the patch creates."""
    import qwen_interp
    reg = qwen_interp.registry()
    applied = []
    for patch in project(distribution).patches:
        edits = patch.apply(root, reg)
        before = {rel: (root / rel).read_text() if (root / rel).exists() else None
                  for rel in edits}
        for rel, text in edits.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        applied.append((patch, {rel: (before[rel], edits[rel]) for rel in edits}))
    return applied


def render(distribution: str, against: Path | None = None) -> str:
    """PR description and a ``git apply``-able unified diff for each patch, against a checkout
    (``against``) or the installed pinned release. The checkout itself is not modified."""
    proj = project(distribution)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if against is None:
            copy_released_source(distribution, scratch)
        else:
            shutil.copytree(Path(against) / proj.package, scratch / proj.package)
        parts = []
        for patch, files in apply(distribution, scratch):
            parts.append(f"## {patch.title}\n\n{patch.description}\n")
            for rel, (old, new) in sorted(files.items()):
                parts.append("".join(difflib.unified_diff(
                    (old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                    "/dev/null" if old is None else f"a/{rel}", f"b/{rel}")))
            if not files:
                parts.append("(already upstream: nothing to change)\n")
        return "\n".join(parts)
