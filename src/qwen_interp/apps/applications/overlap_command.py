"""``qwen-interp overlap``: feature overlap of datasets (benchmark redundancy)."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("qwen-interp overlap is being built")


COMMAND = Command("overlap", "feature overlap of datasets (benchmark redundancy)", configure=configure, run=run)
