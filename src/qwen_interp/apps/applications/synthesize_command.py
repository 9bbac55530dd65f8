"""``qwen-interp synthesize``: generation steered toward features a dataset never activates."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("qwen-interp synthesize is being built")


COMMAND = Command("synthesize", "generation steered toward features a dataset never activates", configure=configure, run=run)
