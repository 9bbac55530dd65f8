"""``qwen-interp anomalies``: features over-represented in code-switching and repetition."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("qwen-interp anomalies is being built")


COMMAND = Command("anomalies", "features over-represented in code-switching and repetition", configure=configure, run=run)
