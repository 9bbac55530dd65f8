"""Render and apply the upstream patches in ``patches/`` (package ``qwen_interp_patches``)."""

from __future__ import annotations

import difflib
import importlib.metadata
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def project(distribution: str):
    from qwen_interp_patches import projects
    table = projects()
    try:
        return table[distribution]
    except KeyError:
        raise ValueError(f"no patches for {distribution!r}; known: {sorted(table)}") from None


def copy_released_source(distribution: str, dest: Path) -> Path:
    """Copy the installed release's package files (for a pure-Python wheel: its released source
    and package data) into ``dest``, laid out like the repository root; return ``dest``."""
    proj = project(distribution)
    dist = importlib.metadata.distribution(distribution)
    if dist.version != proj.pinned:
        raise ValueError(f"{distribution} {dist.version} is installed; patches target "
                         f"{proj.pinned}: pass a checkout with --against")
    for file in dist.files or []:
        if file.parts[0] == proj.package and file.suffix != ".pyc":
            target = dest / Path(*file.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file.locate(), target)
    return dest


def copy_checkout(distribution: str, against: Path, dest: Path) -> Path:
    """Copy the package folder of an upstream checkout (the repository root) into ``dest``."""
    proj = project(distribution)
    against = Path(against).expanduser()
    if not (against / proj.package).is_dir():
        raise ValueError(f"--against {against}: not a checkout of {proj.repository or distribution}"
                         f" (expected the repository root, holding the {proj.package}/ folder)")
    shutil.copytree(against / proj.package, dest / proj.package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def apply(distribution: str, root: Path) -> list[tuple[object, dict[str, tuple[str, str]], str]]:
    """Apply every patch, in order, in place to the tree at ``root``.

    Returns each patch with ``{path: (old text, new text)}`` of the files it changed (old text
    is None for a file the patch creates) and a note: "" when it changed something, else why
    not (already upstream, or not applicable to this tree)."""
    import qwen_interp
    from qwen_interp_patches import NotApplicable
    reg = qwen_interp.registry()
    applied = []
    for patch in project(distribution).patches:
        try:
            edits = patch.apply(root, reg)
        except NotApplicable as exc:
            applied.append((patch, {}, f"not applicable to this tree: {exc}"))
            continue
        before = {rel: (root / rel).read_text() if (root / rel).exists() else None
                  for rel in edits}
        edits = {rel: text for rel, text in edits.items() if text != before[rel]}
        for rel, text in edits.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        note = "" if edits else "already upstream: nothing to change"
        applied.append((patch, {rel: (before[rel], edits[rel]) for rel in edits}, note))
    return applied


@dataclass(frozen=True)
class Rendered:
    patch: object  # qwen_interp_patches.Patch
    diff: str  # unified diff, paths relative to the repository root; "" when nothing changes
    note: str  # why there is no diff ("" when there is one)


def rendered(distribution: str, against: Path | None = None) -> list[Rendered]:
    """Each patch's diff against a checkout (``against``, not modified) or the installed
    pinned release; every diff is computed from the target's own files."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        if against is None:
            copy_released_source(distribution, scratch)
        else:
            copy_checkout(distribution, Path(against), scratch)
        out = []
        for patch, files, note in apply(distribution, scratch):
            diff = "".join(file_diff(rel, old, new) for rel, (old, new) in sorted(files.items()))
            out.append(Rendered(patch, diff, note))
        return out


def file_diff(rel: str, old: str | None, new: str) -> str:
    """A unified diff git applies; difflib leaves a last line without newline unmarked."""
    lines = difflib.unified_diff((old or "").splitlines(keepends=True),
                                 new.splitlines(keepends=True),
                                 "/dev/null" if old is None else f"a/{rel}", f"b/{rel}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)


def render(distribution: str, against: Path | None = None) -> str:
    """PR description and a ``git apply``-able unified diff for each patch, against a checkout
    (``against``) or the installed pinned release. The checkout itself is not modified."""
    parts = []
    for r in rendered(distribution, against):
        parts.append(f"## {r.patch.title}\n\n{r.patch.pr_text()}\n")
        parts.append(r.diff if r.diff else f"({r.note})\n")
    return "\n".join(parts)


def check(distribution: str, against: Path | None = None) -> list[tuple[Rendered, str]]:
    """``git apply --check`` of each rendered patch, in order, on a copy of the target with the
    previous patches applied (as a maintainer applies them). Returns each with "ok", the note
    of a patch without diff, or "FAILED: <git's message>"."""
    if shutil.which("git") is None:
        raise ValueError("patches check needs git on PATH (it runs `git apply --check`)")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / "tree"
        scratch.mkdir()
        if against is None:
            copy_released_source(distribution, scratch)
        else:
            copy_checkout(distribution, Path(against), scratch)
        # Its own repository root, so git applies paths relative to it wherever TMPDIR is.
        subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
        for r in rendered(distribution, against):
            if not r.diff:
                results.append((r, r.note))
                continue
            diff = Path(tmp) / f"{r.patch.name}.patch"
            diff.write_text(r.diff)
            proc = subprocess.run(["git", "apply", "--check", str(diff)], cwd=scratch,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                results.append((r, "FAILED: " + " ".join(proc.stderr.split())))
                break  # the later patches build on this one
            subprocess.run(["git", "apply", str(diff)], cwd=scratch, check=True)
            results.append((r, "ok"))
    return results
