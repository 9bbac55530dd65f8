"""``qwen-interp``: doctor, registries, and the main job (trace)."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


def cmd_doctor(args) -> int:
    from qwen_interp import compat
    versions = {p: compat.installed_version(p) for p in compat.STACK}
    print(f"python {platform.python_version()}")
    for package, version in versions.items():
        print(f"  {package:16} {version or 'not installed'}")
    import qwen_interp
    st = qwen_interp.activation.state()
    print("plugins:", ", ".join(st.plugin_names) or "none "
          f"(limited by {qwen_interp.plugins.ENV_LOAD_PLUGINS})")
    for name, why in st.skipped_plugins.items():  # a broken plugin is named, not a crash
        print(f"  SKIPPED plugin {name!r}: {why}")
    for text in st.plugin_warnings:
        print(f"  WARNING: {text}")
    for table, owners in st.registry.owners.items():
        if owners:
            print(f"  {table}: {len(owners)} ({', '.join(sorted(set(owners.values())))})")
    print("upstream gaps bridged:")
    for name, adapter in st.registry.adapters.items():
        try:  # importing the upstream package runs its adapter
            importlib.import_module(adapter.module)
        except Exception as exc:  # noqa: BLE001 - an absent ecosystem is a report, not a crash
            print(f"  [{name}] stood down: {adapter.module} does not import ({exc})")
            continue
        if name in st.adapter_errors:
            print(f"  [{name}] FAILED and undone: {st.adapter_errors[name]}")
        try:
            lines = adapter.status()
        except Exception as exc:  # noqa: BLE001 - a third-party adapter must not break doctor
            lines = [f"status() raised {type(exc).__name__}: {exc}"]
        for line in lines:
            print(f"  [{name}] {line}")
    bad = compat.warnings_for(versions)
    for warning in bad:
        print(f"WARNING: {warning}")
    if not bad:
        print("no known-bad versions installed")
    return 1 if bad or st.adapter_errors or st.skipped_plugins or st.plugin_warnings else 0


def cmd_models(args) -> int:
    import qwen_interp
    reg = qwen_interp.registry()
    print("models:")
    for spec in reg.models.values():
        print(f"  {spec.repo_id:28} {spec.architecture:22} aliases: {', '.join(spec.aliases)}")
    print("transcoders:")
    for rel in reg.transcoder_releases.values():
        print(f"  {rel.repo_id:40} for {rel.model_repo_id}  aliases: {', '.join(rel.aliases)}")
    print("SAE releases:")
    for rel in reg.sae_releases.values():
        print(f"  {rel.release:42} {rel.repo_id}")
    return 0


def cmd_saes(args) -> int:
    try:
        from qwen_interp_saelens import format_sae_releases, list_sae_releases
    except ImportError:
        print("the saelens plugin is not installed or not loaded")
        return 1
    print(format_sae_releases(list_sae_releases(args.release), verbose=args.verbose))
    return 0


def cmd_trace(args) -> int:
    from . import trace
    trace.check_prompt(args.prompt)
    trace.resolve_device(args.device)
    trace.check_output_dir(args.out)  # before any work: an unwritable --out fails now
    quiet_trust_remote_code_warning()
    demo = args.model is None and args.transcoder is None
    model = args.model or trace.DEFAULT_MODEL
    transcoder = args.transcoder or trace.DEFAULT_TRANSCODER
    if demo:
        hf_home = trace.use_demo_hub()
        print(f"offline demo: small random-weight {model} and {transcoder} in {hf_home} "
              "(pass --model/--transcoder for real checkpoints)")
        trace.build_demo(hf_home, model, transcoder)
    trace.run_trace(model, transcoder, prompt=args.prompt, out_dir=args.out,
                    backend=args.backend, device=args.device, dtype=args.dtype,
                    max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size)
    return 0


def quiet_trust_remote_code_warning() -> None:
    """TransformerLens logs "requires setting trust_remote_code=True" for every Qwen name; Qwen3
    checkpoints need no remote code, so in the CLI's output that line is only noise."""
    import logging

    class Drop(logging.Filter):
        def filter(self, record):
            return "requires setting trust_remote_code" not in record.getMessage()
    logging.getLogger().addFilter(Drop())


def cmd_patches(args) -> int:
    from pathlib import Path

    from . import upstream
    from qwen_interp_patches import projects
    if args.action == "list":
        for name, proj in projects().items():
            for patch in proj.patches:
                print(f"{name} {proj.pinned}  {patch.name:24} {patch.title}")
        return 0
    if not args.project:
        print(f"{args.action} needs a project, e.g. `qwen-interp patches {args.action} "
              "transformer-lens`", file=sys.stderr)
        return 2
    against = Path(args.against) if args.against else None
    if args.action == "render":
        print(upstream.render(args.project, against))
        return 0
    target = against or f"the installed {args.project} {upstream.project(args.project).pinned}"
    print(f"{args.project}: git apply --check of each patch, in order, against {target}")
    results = upstream.check(args.project, against)
    for r, result in results:
        print(f"  {r.patch.name:28} {result}")
    return 1 if any(result.startswith("FAILED") for _, result in results) else 0


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .trace import SEED_PROMPT
    parser = Parser(prog="qwen-interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("doctor", help="versions, plugins, bridged gaps, known-bad versions"
                   ).set_defaults(func=cmd_doctor)
    sub.add_parser("models", help="registered models, transcoders and SAE releases"
                   ).set_defaults(func=cmd_models)
    s = sub.add_parser("saes", help="Qwen-Scope SAE releases, their layers and where each is cached")
    s.add_argument("release", nargs="?", help="one release, e.g. qwen-scope-3-1.7b-base-w32k-l50")
    s.add_argument("-v", "--verbose", action="store_true", help="one line per layer, with paths")
    s.set_defaults(func=cmd_saes)
    t = sub.add_parser("trace", help="attribution graph of a prompt (default: offline demo)")
    t.add_argument("--model", help="model repo id or alias (default: offline demo)")
    t.add_argument("--transcoder", help="CLT repo id or alias (default: offline demo)")
    t.add_argument("--prompt", default=SEED_PROMPT)
    t.add_argument("--out", default="graph_files", help="folder for the graph files")
    t.add_argument("--backend", default="transformerlens", choices=["transformerlens", "nnsight"])
    t.add_argument("--device", default=None)
    t.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    t.add_argument("--max-feature-nodes", type=positive_int, default=8192)
    t.add_argument("--batch-size", type=positive_int, default=256)
    t.set_defaults(func=cmd_trace)
    p = sub.add_parser("patches", help="upstream-ready patches: list, render as a PR, or check "
                       "that they apply (git apply --check)")
    p.add_argument("action", choices=["list", "render", "check"])
    p.add_argument("project", nargs="?", help="e.g. transformer-lens")
    p.add_argument("--against", help="root of an upstream checkout to render/check against "
                   "(default: the installed pinned release)")
    p.set_defaults(func=cmd_patches)
    return parser


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


ENV_DEBUG = "QWEN_INTERP_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr and a non-zero exit code
    (``QWEN_INTERP_DEBUG=1`` shows the traceback instead)."""
    import os
    args = build_parser().parse_args(argv)  # usage errors: argparse's one line, exit 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("qwen-interp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, never a traceback
        if os.environ.get(ENV_DEBUG, "") not in ("", "0"):
            raise
        print(f"qwen-interp {args.command}: error: {describe(exc)}", file=sys.stderr)
        return 1


def describe(exc: BaseException) -> str:
    """One line for an exception: its message, or its type when the message is empty. Errors of
    unexpected types keep their type name, so a bug reads as one."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (ValueError, OSError, ImportError)):
        return text
    return f"{type(exc).__name__}: {text} (set {ENV_DEBUG}=1 for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
