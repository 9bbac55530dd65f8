"""``qwen-interp``: one subcommand per registered command.

The command line's own ``doctor``, ``models``, ``trace`` and ``patches``
(:mod:`qwen_interp.apps.commands`), then every plugin's (``register_commands``): ``saes`` (the
saelens plugin) and any third-party plugin's. Every failure ends in one line on stderr.
"""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(commands: dict | None = None) -> argparse.ArgumentParser:
    """The parser: one subcommand per :class:`~qwen_interp.specs.Command` (default:
    :func:`all_commands`), by name. A command whose ``configure`` raises is left out, with one
    line on stderr, so one broken plugin does not take the other commands with it."""
    if commands is None:
        commands = all_commands()
    parser = Parser(prog="qwen-interp", description="Qwen3 / Qwen3.5 in TransformerLens, "
                    "circuit-tracer and SAELens: doctor, registries, the main job (trace), and "
                    "the commands of every plugin.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in sorted(commands):
        command = commands[name]
        try:  # on a parser of its own first: argparse cannot take a subcommand back
            command.configure(Parser(prog=f"qwen-interp {name}"))
        except Exception as exc:  # noqa: BLE001 - a plugin's bug, reported in one line
            print(f"qwen-interp: command {name!r} left out: its configure raised "
                  f"{type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
            continue
        sub_parser = sub.add_parser(name, help=command.help)
        command.configure(sub_parser)
        sub_parser.set_defaults(func=command.run)
    return parser


def all_commands() -> dict:
    """The command line's own commands, then every plugin's. A plugin command that takes a
    built-in command's name is left out, with one line on stderr naming the plugin."""
    import qwen_interp

    from .commands import BUILTIN_COMMANDS
    commands = {command.name: command for command in BUILTIN_COMMANDS}
    registry = qwen_interp.registry()
    for name, command in registry.commands.items():
        if name in commands:
            print(f"qwen-interp: command {name!r} of plugin "
                  f"{registry.owners['commands'][name]!r} left out: {name!r} is a built-in "
                  "command", file=sys.stderr)
            continue
        commands[name] = command
    return commands


ENV_DEBUG = "QWEN_INTERP_DEBUG"


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends in one line on stderr and a non-zero exit code
    (``QWEN_INTERP_DEBUG=1`` shows the traceback instead)."""
    args = build_parser().parse_args(argv)  # usage errors: argparse's one line, exit 2
    debug = False
    try:
        from qwen_interp import settings
        debug = settings.DEBUG.get()  # read inside the try: a bad value is a one-line error too
        return args.func(args)
    except KeyboardInterrupt:
        print("qwen-interp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, never a traceback
        if debug:
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
