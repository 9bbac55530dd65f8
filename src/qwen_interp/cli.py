"""``qwen-interp``: doctor, registries, and the main job (trace)."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys


def cmd_doctor(args) -> int:
    from . import compat
    versions = {p: compat.installed_version(p) for p in compat.STACK}
    print(f"python {platform.python_version()}")
    for package, version in versions.items():
        print(f"  {package:16} {version or 'not installed'}")
    import qwen_interp
    st = qwen_interp.activation.state()
    print("plugins:", ", ".join(st.plugin_names) or "none "
          f"(limited by {qwen_interp.plugins.ENV_LOAD_PLUGINS})")
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
        for line in adapter.status():
            print(f"  [{name}] {line}")
    bad = compat.warnings_for(versions)
    for warning in bad:
        print(f"WARNING: {warning}")
    if not bad:
        print("no known-bad versions installed")
    return 1 if bad or st.adapter_errors else 0


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
        print("render needs a project, e.g. `qwen-interp patches render transformer-lens`")
        return 2
    print(upstream.render(args.project, Path(args.against) if args.against else None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .trace import SEED_PROMPT
    parser = argparse.ArgumentParser(prog="qwen-interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
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
    t.add_argument("--max-feature-nodes", type=int, default=8192)
    t.add_argument("--batch-size", type=int, default=256)
    t.set_defaults(func=cmd_trace)
    p = sub.add_parser("patches", help="upstream-ready patches: list, or render as a PR")
    p.add_argument("action", choices=["list", "render"])
    p.add_argument("project", nargs="?", help="e.g. transformer-lens")
    p.add_argument("--against", help="upstream checkout (default: the installed pinned release)")
    p.set_defaults(func=cmd_patches)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
