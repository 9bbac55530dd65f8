"""``qwen-interp topology``: Mapper graphs of dictionary features (encoder, decoder, co-activation)."""

from __future__ import annotations

import argparse

from qwen_interp.specs import Command


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("qwen-interp topology is being built")


COMMAND = Command("topology", "Mapper graphs of dictionary features (encoder, decoder, co-activation)", configure=configure, run=run)
