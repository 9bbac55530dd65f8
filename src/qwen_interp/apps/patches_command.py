"""``qwen-interp patches``: list, render, check or write the upstream patches the plugins
register (``register_upstream_patches``); the work is done by ``qwen_interp.apps.upstream``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwen_interp.specs import Command

ACTIONS = ("list", "render", "check", "write")
DEFAULT_OUT = "patches"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=list(ACTIONS))
    parser.add_argument("project", nargs="?", help="e.g. transformer-lens (write: default all)")
    parser.add_argument("--against", help="root of an upstream checkout to render, check or "
                        "write against (default: the installed pinned release)")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"write: folder for <project>/<NN>-<name>.patch "
                        f"(default: ./{DEFAULT_OUT})")


def run(args: argparse.Namespace) -> int:
    from . import upstream
    if args.action == "list":
        for name, proj in upstream.projects().items():
            for patch in proj.patches:
                print(f"{name} {proj.pinned}  {patch.name:24} {patch.title}")
        return 0
    against = Path(args.against) if args.against else None
    if args.action == "write":
        names = [args.project] if args.project else list(upstream.projects())
        for name in names:
            upstream.project(name)  # an unknown name fails before anything is written
        for name in names:
            for line in upstream.write_patch_files(Path(args.out), name, against):
                print(line)
        return 0
    if not args.project:
        print(f"{args.action} needs a project, e.g. `qwen-interp patches {args.action} "
              "transformer-lens`", file=sys.stderr)
        return 2
    if args.action == "render":
        print(upstream.render(args.project, against))
        return 0
    target = against or f"the installed {args.project} {upstream.project(args.project).pinned}"
    print(f"{args.project}: git apply --check of each patch, in order, against {target}")
    results = upstream.check(args.project, against)
    for r, result in results:
        print(f"  {r.patch.name:28} {result}")
    return 1 if any(result.startswith("FAILED") for _, result in results) else 0


COMMAND = Command(
    name="patches",
    help="upstream-ready patches: list, render as a PR, check that they apply (git apply "
         "--check), or write them as patch files",
    configure=configure,
    run=run,
)
