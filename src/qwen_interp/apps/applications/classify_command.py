"""``qwen-interp classify``: training-free classifiers from a few seed examples (fit, predict, eval)."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("qwen-interp classify is being built")


COMMAND = Command("classify", "training-free classifiers from a few seed examples (fit, predict, eval)", configure=configure, run=run)
