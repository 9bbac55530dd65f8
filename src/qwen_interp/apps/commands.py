"""The command line's own commands: ``doctor``, ``models``, ``trace``, ``patches`` and
``features`` (``features/command.py``).

They belong to the app, not to a plugin: :mod:`qwen_interp.apps.cli` puts them first and adds
every plugin's commands (``register_commands``), so ``QWEN_INTERP_PLUGINS="" qwen-interp
doctor`` still works and the core never names an app.
"""

from __future__ import annotations

import argparse
import importlib
import platform

from qwen_interp.specs import Command

from .applications.anomalies_command import COMMAND as ANOMALIES
from .applications.classify_command import COMMAND as CLASSIFY
from .applications.overlap_command import COMMAND as OVERLAP
from .applications.synthesize_command import COMMAND as SYNTHESIZE
from .explorer.command import COMMAND as EXPLORE
from .study.command import COMMAND as STUDY
from .features.command import COMMAND as FEATURES
from .patches_command import COMMAND as PATCHES
from .topology.command import COMMAND as TOPOLOGY


# --- doctor ---------------------------------------------------------------------------------
def run_doctor(args: argparse.Namespace) -> int:
    """Versions, plugins, what each adapter bridged, and every doctor check. Exit 1 when a
    plugin was skipped or warned about, an adapter or one of its parts failed, or a check found
    a problem (or raised)."""
    import qwen_interp
    from qwen_interp import compat
    print(f"python {platform.python_version()}")
    for package in compat.STACK:
        print(f"  {package:16} {compat.installed_version(package) or 'not installed'}")
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
    failed_parts = sum(print_adapter(name, adapter, st.adapter_errors)
                       for name, adapter in st.registry.adapters.items())
    problems = run_doctor_checks(st.registry.doctor_checks)
    for problem in problems:
        print(f"WARNING: {problem}")
    if not problems:
        print(f"no known-bad versions installed (doctor checks: "
              f"{', '.join(st.registry.doctor_checks) or 'none'})")
    broken = problems or st.adapter_errors or failed_parts or st.skipped_plugins
    return 1 if broken or st.plugin_warnings else 0


def print_adapter(name: str, adapter, adapter_errors: dict[str, str]) -> int:
    """Print one adapter's status, one line per part; return how many parts FAILED."""
    from qwen_interp.adapters import FAILED, PartStatus
    try:  # importing the upstream package runs its adapter
        importlib.import_module(adapter.module)
    except Exception as exc:  # noqa: BLE001 - an absent ecosystem is a report, not a crash
        print(f"  [{name}] stood down: {adapter.module} does not import ({exc})")
        return 0
    for module in getattr(adapter, "modules", list)():  # each part applies on its module's import
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - reported; its parts stay inactive
            print(f"  [{name}] {module} does not import ({type(exc).__name__}: {exc})")
    if name in adapter_errors:
        print(f"  [{name}] FAILED and undone: {adapter_errors[name]}")
    try:
        lines = list(adapter.status())
    except Exception as exc:  # noqa: BLE001 - a third-party adapter must not break doctor
        lines = [f"status() raised {type(exc).__name__}: {exc}"]
    for line in lines:  # PartStatus records; a third-party adapter may still return strings
        print(f"  [{name}] {line.line() if isinstance(line, PartStatus) else line}")
    return sum(isinstance(s, PartStatus) and s.state == FAILED for s in lines)


def run_doctor_checks(checks: dict) -> list[str]:
    """The problem lines of every check, in registry order; a check that raises is a problem."""
    problems = []
    for name, check in checks.items():
        try:
            problems += [str(line) for line in check.run()]
        except Exception as exc:  # noqa: BLE001 - reported, not a crash
            problems.append(f"doctor check {name!r} raised {type(exc).__name__}: {exc}")
    return problems


# --- models ---------------------------------------------------------------------------------
def run_models(args: argparse.Namespace) -> int:
    import qwen_interp
    reg = qwen_interp.registry()
    print("models:")
    for spec in reg.models.values():
        print(f"  {spec.repo_id:28} {spec.architecture:22} aliases: {', '.join(spec.aliases)}")
    print("transcoders:")
    for rel in reg.transcoder_releases.values():
        print(f"  {rel.repo_id:40} for {rel.model_repo_id}  aliases: {', '.join(rel.aliases)}")
    print("SAE releases:")
    for sae in reg.sae_releases.values():
        print(f"  {sae.release:42} {sae.repo_id}")
    return 0


# --- trace ----------------------------------------------------------------------------------
def configure_trace(parser: argparse.ArgumentParser) -> None:
    from .trace import SEED_PROMPT
    parser.add_argument("--model", help="model repo id or alias (default: offline demo)")
    parser.add_argument("--transcoder", help="CLT repo id or alias (default: offline demo)")
    parser.add_argument("--prompt", default=SEED_PROMPT)
    parser.add_argument("--out", default="graph_files", help="folder for the graph files")
    parser.add_argument("--backend", default="transformerlens",
                        choices=["transformerlens", "nnsight"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--max-feature-nodes", type=positive_int, default=8192)
    parser.add_argument("--batch-size", type=positive_int, default=256)


def run_trace(args: argparse.Namespace) -> int:
    from . import trace
    trace.check_prompt(args.prompt)
    trace.resolve_device(args.device)
    trace.check_output_dir(args.out)  # before any work: an unwritable --out fails now
    quiet_trust_remote_code_warning()
    demo = args.model is None and args.transcoder is None
    model = args.model or trace.DEFAULT_MODEL
    transcoder = args.transcoder or trace.DEFAULT_TRANSCODER
    if demo:
        trace.start_demo(model, transcoder)
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def natural_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


DOCTOR = Command("doctor", "versions, plugins, bridged gaps, known-bad versions",
                 configure=no_arguments, run=run_doctor)
MODELS = Command("models", "registered models, transcoders and SAE releases",
                 configure=no_arguments, run=run_models)
TRACE = Command("trace", "attribution graph of a prompt (default: offline demo)",
                configure=configure_trace, run=run_trace)


# The command line's own commands; plugins add theirs through `register_commands`.
BUILTIN_COMMANDS = (DOCTOR, MODELS, TRACE, PATCHES, FEATURES, EXPLORE, STUDY, CLASSIFY, OVERLAP,
                    ANOMALIES, SYNTHESIZE, TOPOLOGY)
