"""Upstream patches as records: what a plugin proposes to change in its upstream package.

An ecosystem plugin registers one :class:`UpstreamProject` per upstream distribution through the
``register_upstream_patches`` hook. Each :class:`Patch` is a *generator*: ``apply(root,
registry)`` returns ``{relative path: new text}`` for the files it changes, computed from the
pristine files under ``root`` (the upstream repository root, or an unpacked release) and
qwen-interp's registry, so a patch and the plugin code it replaces cannot drift apart.
``qwen_interp.apps.upstream`` renders, applies and checks them (``qwen-interp patches``).

The text helpers below are shared by the plugins' generators.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Any


class UpstreamLayoutChanged(RuntimeError):
    """The upstream file no longer has the text a patch anchors on: the patch needs updating."""


class NotApplicable(Exception):
    """The target tree lacks what a patch changes (e.g. an older release without the loader it
    fixes): nothing to propose there. Distinct from "already upstream" (``apply`` returns {})."""


@dataclass(frozen=True)
class Patch:
    """One upstream change, proposed as one PR: ``apply(root, registry)`` returns the new text
    of each file it changes under ``root`` ({} when the tree already has the change) or raises
    :class:`NotApplicable` / :class:`UpstreamLayoutChanged`."""

    name: str  # short, file-name safe: the rendered file is <NN>-<name>.patch
    title: str
    description: str
    apply: Callable[[Path, Any], dict[str, str]]
    # Upstream issues and PRs the change addresses or relates to, each "#N: why" (same repository).
    refs: tuple[str, ...] = ()

    def pr_text(self) -> str:
        """The PR description: the text, then the upstream issues and PRs it refers to."""
        text = self.description
        if self.refs:
            text += "\n\nRelated upstream issues and PRs:\n"
            text += "".join(f"- {r}\n" for r in self.refs)
        return text


@dataclass(frozen=True)
class UpstreamProject:
    """The patches proposed to one upstream distribution, applied in order (a later patch may
    build on an earlier one). Registered by the plugin of that ecosystem; keyed by
    ``distribution``."""

    distribution: str  # PyPI name
    package: str  # top-level import package inside the repository
    pinned: str  # the release the plugin supports; patches render against it by default
    patches: tuple[Patch, ...]
    repository: str = ""  # the upstream repository a maintainer applies the patches to

    def __post_init__(self) -> None:
        names = [p.name for p in self.patches]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"UpstreamProject {self.distribution!r}: patch names must be "
                             f"unique, got {repeated} more than once")


def insert_sorted(text: str, opener: str, entries: dict[str, str],
                  key_of: Callable[[str], str | None], path: str) -> str:
    """Insert each of ``entries`` ({name: its line(s)}) into the literal that starts at the line
    ``opener`` and ends at the next line holding only ``]`` or ``}``: before the first entry
    whose key (``key_of(line)``; None for lines that start no entry) sorts after the name under
    ``str.casefold`` (the order TransformerLens's own tests check), else before the closing line.
    """
    lines = text.splitlines(keepends=True)
    try:
        first = lines.index(opener) + 1
    except ValueError:
        raise UpstreamLayoutChanged(f"{path}: no line {opener.strip()!r}") from None
    close = next((i for i in range(first, len(lines)) if lines[i].rstrip() in ("]", "}")), None)
    if close is None:
        raise UpstreamLayoutChanged(f"{path}: {opener.strip()!r} is not closed")
    body = lines[first:close]
    for name, block in sorted(entries.items(), key=lambda e: e[0].casefold()):
        later = [i for i, line in enumerate(body)
                 if (k := key_of(line)) is not None and k.casefold() > name.casefold()]
        body.insert(later[0] if later else len(body), block)
    return "".join(lines[:first] + body + lines[close:])


def add_import(text: str, module: str, name: str, path: str) -> str:
    """``from module import name`` among the file's top-level ``from circuit_tracer...`` imports,
    in isort's place (before the first one of a later module), else after its last import."""
    nodes = [n for n in ast.parse(text).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    if not nodes:
        raise UpstreamLayoutChanged(f"{path}: no imports")
    pkg = module.split(".")[0] + "."
    own = [n for n in nodes if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(pkg)]
    later = [n for n in own if (n.module or "") > module]
    at = later[0].lineno - 1 if later else ((own or nodes)[-1].end_lineno or 0)
    lines = text.splitlines(keepends=True)
    lines.insert(at, f"from {module} import {name}\n")
    return "".join(lines)


def require_names(source: str, names: Iterable[str], what: str) -> None:
    """Fail at render time if a shipped module no longer defines what the patch's glue uses."""
    tree = ast.parse(source)
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
                if isinstance(t, ast.Name)}
    missing = sorted(set(names) - defined)
    if missing:
        raise UpstreamLayoutChanged(f"{what} no longer defines {missing}: update the patch glue")


def require_standalone(source: str, what: str) -> None:
    """Fail at render time if a module shipped as one upstream file imports qwen-interp or a
    sibling module (neither exists upstream)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").split(".")[0].startswith("qwen_interp")):
            raise UpstreamLayoutChanged(f"{what} imports {'.' * node.level}{node.module or ''}, "
                                        "which does not exist upstream: update the patch")
        if isinstance(node, ast.Import) and any(a.name.split(".")[0].startswith("qwen_interp")
                                                for a in node.names):
            raise UpstreamLayoutChanged(f"{what} imports qwen-interp: update the patch")

