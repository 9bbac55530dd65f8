"""What the pinned stack is, and a checker for known-bad versions of it.

The rules themselves belong to the plugins that know the upstream packages: each registers a
``DoctorCheck`` built by :func:`known_bad_check` (``register_doctor_checks``), and
``qwen-interp doctor`` prints every version that matches a rule as a warning.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass

from .specs import DoctorCheck

STACK = ("torch", "transformers", "huggingface-hub", "tokenizers", "transformer-lens",
         "circuit-tracer", "nnsight", "sae-lens", "pluggy", "safetensors")


@dataclass(frozen=True)
class KnownBad:
    """Versions of ``package`` matching the specifier ``bad`` (e.g. ``">=4.0"``) do not work,
    for the reason ``why``; with ``only_with``, only when that package is installed too."""

    package: str
    bad: str
    why: str
    only_with: str | None = None


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def warnings_for(versions: dict[str, str | None], rules: Iterable[KnownBad]) -> list[str]:
    """One line per rule that ``versions`` (package -> version, None: not installed) match, in
    the order of ``rules``: ``"<package> <version>: <why>"``."""
    # Imported here: `import qwen_interp` (which builds the checks) stays free of packaging.
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version
    out = []
    for rule in rules:
        v = versions.get(rule.package)
        if rule.only_with and versions.get(rule.only_with) is None:
            continue  # e.g. the qwen35 profile: no circuit-tracer, so TL 3.9 is right there
        if v is not None and Version(v) in SpecifierSet(rule.bad):
            out.append(f"{rule.package} {v}: {rule.why}")
    return out


def known_bad_check(name: str, rules: tuple[KnownBad, ...]) -> DoctorCheck:
    """A doctor check that reports each of ``rules`` the installed versions match."""
    def run() -> list[str]:
        packages = {r.package for r in rules} | {r.only_with for r in rules if r.only_with}
        return warnings_for({p: installed_version(p) for p in sorted(packages)}, rules)
    return DoctorCheck(name, run)
