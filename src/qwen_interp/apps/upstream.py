"""Render, apply and check the upstream patches the plugins register
(``register_upstream_patches``), and write them as patch files (``patches/<distribution>/``)."""

from __future__ import annotations

import difflib
import importlib.metadata
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qwen_interp.upstream_patches import NotApplicable, Patch, UpstreamProject


def projects() -> dict[str, UpstreamProject]:
    """Every registered upstream project, by distribution: each after the registered ones it
    depends on (TransformerLens before circuit-tracer and SAELens, which build on it), then by
    name, so that the order does not depend on the order the plugins load in."""
    import qwen_interp
    reg = qwen_interp.registry()
    table = dict(reg.upstream_projects)
    depth: dict[str, int] = {}
    for name in table:
        _dependency_depth(name, set(table), depth)
    return {name: table[name] for name in sorted(table, key=lambda n: (depth[n], n))}


def _dependency_depth(name: str, names: set[str], depth: dict[str, int],
                      seen: frozenset[str] = frozenset()) -> int:
    """0 for a distribution that requires none of ``names`` (as installed), else one more than
    the deepest of those it requires."""
    if name not in depth:
        below = [_dependency_depth(r, names, depth, seen | {name})
                 for r in _requirements(name) & names - seen - {name}]
        depth[name] = 1 + max(below) if below else 0
    return depth[name]


def _requirements(distribution: str) -> set[str]:
    """The installed ``distribution``'s required distributions (extras left out), normalised."""
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return set()
    names = (re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r) for r in requires
             if not re.search(r";.*\bextra\b", r))
    return {re.sub(r"[-_.]+", "-", m.group(0)).lower() for m in names if m}


def project(distribution: str) -> UpstreamProject:
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


def apply(distribution: str,
          root: Path) -> list[tuple[Patch, dict[str, tuple[str | None, str]], str]]:
    """Apply every patch, in order, in place to the tree at ``root``.

    Returns each patch with ``{path: (old text, new text)}`` of the files it changed (old text
    is None for a file the patch creates) and a note: "" when it changed something, else why
    not (already upstream, or not applicable to this tree)."""
    import qwen_interp
    reg = qwen_interp.registry()
    applied: list[tuple[Patch, dict[str, tuple[str | None, str]], str]] = []
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
    patch: Patch
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
    return "\n".join(section(r) for r in rendered(distribution, against))


def section(r: Rendered) -> str:
    """One patch as ``render`` prints it: a heading, the PR description, then the diff (or why
    there is none). ``git apply`` skips the text before the diff."""
    return f"## {r.patch.title}\n\n{r.patch.pr_text()}\n\n" + (r.diff or f"({r.note})\n")


def patch_file_name(index: int, patch: Patch) -> str:
    """``<NN>-<name>.patch``: the number keeps the order the patches apply in."""
    return f"{index:02d}-{patch.name}.patch"


def patch_files(distribution: str, against: Path | None = None) -> dict[str, str]:
    """``{file name: text}``: each patch of ``distribution`` as its own file, its ``render``
    section, to be applied in name order (each diff is against the tree the earlier ones made)."""
    return {patch_file_name(i, r.patch): section(r)
            for i, r in enumerate(rendered(distribution, against), 1)}


def write_patch_files(out: Path, distribution: str, against: Path | None = None) -> list[str]:
    """Write ``patch_files`` into ``out/<distribution>/`` and remove the ``.patch`` files there
    that no patch writes any more (a renamed or dropped patch). Returns what it did, one line
    per file."""
    files = patch_files(distribution, against)
    folder = Path(out).expanduser() / distribution
    folder.mkdir(parents=True, exist_ok=True)
    done = []
    for stale in sorted(folder.glob("*.patch")):
        if stale.name not in files:
            stale.unlink()
            done.append(f"removed {stale}")
    for name, text in files.items():
        path = folder / name
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            done.append(f"unchanged {path}")
            continue
        path.write_text(text, encoding="utf-8")
        done.append(f"wrote {path}")
    return done


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
