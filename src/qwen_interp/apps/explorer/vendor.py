"""The Explorer's third-party browser libraries: copies of npm package files, pinned by a lockfile.

The browser must load nothing from the internet, so the libraries circuit-tracer's viewer takes
from CDNs (d3, dagre, pako) ship inside this package, in ``static/vendor/``. Where they come
from is recorded, not remembered:

- ``package.json`` + ``package-lock.json`` (npm's lockfile: exact versions, registry tarball
  integrity hashes) say which releases;
- ``vendor.json`` names, for each copied file, its package, its path inside the package and the
  sha256 of its bytes.

``python -m qwen_interp.apps.explorer.vendor --check`` runs ``npm ci`` on the lockfile in a
temporary folder (npm verifies every tarball against the lockfile's integrity) and fails unless
each copy is byte-identical to the installed package's file; ``.ci/run`` runs it. ``--update``
copies the files and rewrites ``vendor.json`` after the lockfile changed. The tests check the
copies against ``vendor.json`` and ``vendor.json`` against the lockfile, offline.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

VENDOR = Path(__file__).parent / "static" / "vendor"
MANIFEST = VENDOR / "vendor.json"

# (package, file inside the package, name here). The jetpack helpers the viewer also needs are
# not on npm in a form that works with d3 v7: static/explorer/jetpack-compat.js provides them.
FILES = [
    ("d3", "dist/d3.min.js", "d3.min.js"),
    ("d3", "LICENSE", "LICENSE.d3"),
    ("dagre", "dist/dagre.min.js", "dagre.min.js"),
    ("dagre", "LICENSE", "LICENSE.dagre"),
    ("pako", "dist/pako.min.js", "pako.min.js"),
    ("pako", "LICENSE", "LICENSE.pako"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lockfile_versions() -> dict[str, str]:
    """Top-level package -> version, as ``package-lock.json`` pins it."""
    lock = json.loads((VENDOR / "package-lock.json").read_text())
    return {path.removeprefix("node_modules/"): entry["version"]
            for path, entry in lock["packages"].items() if path.count("node_modules/") == 1}


def manifest() -> list[dict]:
    return json.loads(MANIFEST.read_text())["files"]


def npm_ci(into: Path) -> Path:
    """Install the lockfile's packages into ``into`` (npm checks each tarball's integrity)."""
    for name in ("package.json", "package-lock.json"):
        shutil.copy(VENDOR / name, into / name)
    subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=into,
                   check=True, stdout=subprocess.DEVNULL)
    return into / "node_modules"


def update() -> None:
    versions = lockfile_versions()
    with tempfile.TemporaryDirectory() as tmp:
        modules = npm_ci(Path(tmp))
        entries = []
        for package, source, name in FILES:
            shutil.copy(modules / package / source, VENDOR / name)
            entries.append({"name": name, "package": package, "version": versions[package],
                            "source": source, "sha256": sha256(VENDOR / name)})
    MANIFEST.write_text(json.dumps({"files": entries}, indent=2) + "\n")


def check() -> list[str]:
    """Differences between the copies here and a fresh ``npm ci`` of the lockfile."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        modules = npm_ci(Path(tmp))
        for entry in manifest():
            installed = modules / entry["package"] / entry["source"]
            if installed.read_bytes() != (VENDOR / entry["name"]).read_bytes():
                problems.append(f"static/vendor/{entry['name']} differs from {entry['package']}"
                                f"@{entry['version']}'s {entry['source']}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare with `npm ci` (default)")
    mode.add_argument("--update", action="store_true", help="copy the files, rewrite vendor.json")
    if parser.parse_args(argv).update:
        update()
        print(f"vendored {len(FILES)} files into {VENDOR}")
        return 0
    problems = check()
    for line in problems:
        print(line)
    if not problems:
        print(f"vendored files equal a fresh `npm ci` of {VENDOR / 'package-lock.json'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
