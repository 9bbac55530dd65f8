"""``qwen-interp study``: the seed study as one command (trace, groups, interventions, report)."""

from __future__ import annotations

import argparse
import math
import sys

from qwen_interp.specs import Command

from .workflow import DEFAULT_MAX_GROUPS, DEFAULT_OUT, DEFAULT_STRENGTHS


def strengths(text: str) -> tuple[float, ...]:
    """``-2,-1,0,1,2`` as floats; argparse turns the ValueError into one line."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected comma-separated numbers, e.g. -2,-1,0,1,2") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected finite comma-separated numbers")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int
    from qwen_interp.apps.trace import SEED_PROMPT
    parser.add_argument("--model", help="model repo id or alias (default: offline demo)")
    parser.add_argument("--transcoder", help="CLT repo id or alias (default: offline demo)")
    parser.add_argument("--prompt", default=SEED_PROMPT)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--groups", metavar="FILE.yaml",
                       help="feature groups to test (the format of the groups.yaml a run "
                            "writes); default: proposed automatically")
    which.add_argument("--auto-groups", action="store_true",
                       help="propose the groups from the graph (the default)")
    parser.add_argument("--features", metavar="DIR",
                        help="a `qwen-interp features compute` output, to label the groups")
    parser.add_argument("--strengths", type=strengths, default=DEFAULT_STRENGTHS,
                        help="scales of each group's activations to sweep, e.g. "
                             "--strengths=-4,-2,0,1 (the = lets it start with a minus; default "
                             f"{','.join(f'{s:g}' for s in DEFAULT_STRENGTHS)})")
    parser.add_argument("--target", help="the token whose probability is tracked (default: the "
                                         "unsteered top prediction)")
    parser.add_argument("--max-groups", type=positive_int, default=DEFAULT_MAX_GROUPS)
    parser.add_argument("--out", default=DEFAULT_OUT, help="folder for the report")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def run(args: argparse.Namespace) -> int:
    from qwen_interp.apps import trace
    from qwen_interp.apps.commands import quiet_trust_remote_code_warning

    from .workflow import StudyConfig, command_line, run_study
    trace.check_prompt(args.prompt)
    trace.resolve_device(args.device)
    trace.check_output_dir(args.out)
    demo = args.model is None and args.transcoder is None
    if (args.model is None) != (args.transcoder is None):
        raise ValueError("--model and --transcoder go together (neither: the offline demo)")
    config = StudyConfig(model=args.model or trace.DEFAULT_MODEL,
                         transcoder=args.transcoder or trace.DEFAULT_TRANSCODER,
                         prompt=args.prompt, groups=args.groups, features_dir=args.features,
                         strengths=args.strengths, target=args.target,
                         max_groups=args.max_groups, out_dir=args.out, device=args.device,
                         dtype=args.dtype, command=command_line(sys.argv[2:]))
    config.check()
    if args.groups:  # a bad file is one line now, not after the model has loaded
        from .workflow import load_groups
        load_groups(args.groups)
    quiet_trust_remote_code_warning()
    if demo:
        trace.start_demo(config.model, config.transcoder)
    run_study(config)
    return 0


COMMAND = Command("study", "the seed study: trace, feature groups, interventions, report",
                  configure=configure, run=run)
