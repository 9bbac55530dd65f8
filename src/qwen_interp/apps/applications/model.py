"""Which model and dictionaries an application runs on, from the command line or from Python.

Every application command takes the same options (:func:`add_model_options`): ``--model`` and
``--transcoder`` (the built-in demo when both are left out), ``--no-transcoder``, ``--sae
SOURCE:LAYERS`` (a Qwen-Scope release name, e.g. ``qwen-scope-3-1.7b-base-w32k-l50:6,12``, or a
local folder of ``layer{n}.sae.pt`` files; repeatable), ``--device``, ``--dtype``, ``--ray`` and
``--workers``. On the demo, the SAEs default to its Qwen-Scope-style SAEs at every layer.

Features are named ``clt/L:F`` (CLT layer L, feature F) and ``sae/L:F`` (the SAE at layer L):
the block names of the feature-statistics engine (``features.collect.blocks``) and a feature id.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_SAE_K = 50  # Qwen-Scope's L0_50 releases


@dataclass(frozen=True)
class ModelConfig:
    """The model, its CLT and SAEs: what a Ray worker needs to load the same session (the
    attributes ``features.collect.load_session`` reads)."""

    model: str
    transcoder: str | None
    saes: tuple[tuple[str, int], ...] = ()  # (release or folder, layer)
    dtype: str = "float32"
    demo: bool = False
    sae_k: int = DEFAULT_SAE_K


@dataclass
class FeatureIndex:
    """Columns of a feature matrix: the blocks (``clt/L``, ``sae/L``) side by side, in the order
    of ``features.collect.blocks``."""

    widths: dict[str, int]
    offsets: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.offsets, start = {}, 0
        for name, width in self.widths.items():
            self.offsets[name] = start
            start += width

    @property
    def size(self) -> int:
        return sum(self.widths.values())

    def column(self, feature: str) -> int:
        """``"sae/2:17"`` -> its column; a ValueError names what was expected."""
        block, sep, number = feature.partition(":")
        if not sep or block not in self.widths or not number.isdigit():
            raise ValueError(f"feature {feature!r}: expected BLOCK:FEATURE with BLOCK one of "
                             f"{', '.join(self.widths)} (e.g. {next(iter(self.widths))}:0)")
        if int(number) >= self.widths[block]:
            raise ValueError(f"feature {feature!r}: {block} has {self.widths[block]} features")
        return self.offsets[block] + int(number)

    def name(self, column: int) -> str:
        for block, start in reversed(self.offsets.items()):
            if column >= start:
                if column - start >= self.widths[block]:
                    break
                return f"{block}:{column - start}"
        raise IndexError(f"column {column} is outside the {self.size} features")

    def names(self, columns) -> list[str]:
        return [self.name(int(c)) for c in np.asarray(columns).ravel()]

    def split(self, feature: str) -> tuple[str, int, int]:
        """``"sae/2:17"`` -> ``("sae", 2, 17)``."""
        self.column(feature)
        block, _, number = feature.partition(":")
        kind, _, layer = block.partition("/")
        return kind, int(layer), int(number)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int
    parser.add_argument("--model", help="model repo id or alias (default: offline demo)")
    parser.add_argument("--transcoder", help="CLT repo id or alias (default: offline demo)")
    parser.add_argument("--no-transcoder", action="store_true", help="SAEs only")
    parser.add_argument("--sae", action="append", default=[], metavar="SOURCE:LAYERS",
                        help="a Qwen-Scope release or a folder of layer{n}.sae.pt files, and "
                             "comma-separated layers, e.g. qwen-scope-3-1.7b-base-w32k-l50:6,12 "
                             "(repeatable; the demo's SAEs at every layer by default)")
    parser.add_argument("--sae-k", type=positive_int, default=DEFAULT_SAE_K,
                        help="top-k of SAEs read from a folder not named after a release")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run the corpus pass on Ray: a local instance, or ADDRESS")
    parser.add_argument("--workers", type=positive_int, default=None,
                        help="Ray actors (default: one per GPU, else one per CPU)")
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> ModelConfig:
    """The :class:`ModelConfig` of parsed options, checked before anything is loaded."""
    from qwen_interp.apps import trace
    from qwen_interp.apps.features.command import parse_saes
    demo = args.model is None and args.transcoder is None
    transcoder = None if args.no_transcoder else (args.transcoder or trace.DEFAULT_TRANSCODER)
    saes = parse_saes(args.sae)
    if not demo and transcoder is None and not saes:
        raise ValueError("no dictionary: give --sae SOURCE:LAYERS or leave out --no-transcoder")
    trace.resolve_device(args.device)
    return ModelConfig(model=args.model or trace.DEFAULT_MODEL, transcoder=transcoder,
                       saes=saes, dtype=args.dtype, demo=demo, sae_k=args.sae_k)


def load_session(config: ModelConfig, device=None, saes: list | None = None):
    """The shared :class:`~qwen_interp.apps.session.Session` with the CLT and SAEs attached.
    ``saes``: SAE objects to attach instead of loading ``config.saes`` (Ray workers get them
    from the driver). On the demo with no ``--sae``, its SAEs at every layer."""
    from qwen_interp.apps.session import Session
    session = Session.from_pretrained(config.model, config.transcoder, device=device,
                                      dtype=config.dtype)
    if saes is None:
        saes = [load_sae(config, source, layer, str(session.model.cfg.device))
                for source, layer in config.saes]
        if config.demo and not config.saes:
            from qwen_interp.apps.demo.build import load_demo_sae
            saes = [load_demo_sae(layer, device=str(session.model.cfg.device))
                    for layer in range(session.model.cfg.n_layers)]
    for sae in saes:
        session.add_sae(sae)
    return session


def load_sae(config: ModelConfig, source: str, layer: int, device: str):
    """A release by name, or a local folder of Qwen-Scope files (k: ``config.sae_k`` unless the
    folder is named after a release)."""
    from pathlib import Path

    from qwen_interp_saelens.loader import load_sae as load
    if Path(source).is_dir():
        return load(source, layer, device=device, k=config.sae_k, model_name=config.model)
    return load(source, layer, device=device)


def start(args: argparse.Namespace) -> tuple[ModelConfig, Any]:
    """Parse the model options, build the demo if it is the default, load the session."""
    from qwen_interp.apps import trace
    from qwen_interp.apps.commands import quiet_trust_remote_code_warning
    config = config_from_args(args)
    quiet_trust_remote_code_warning()
    if config.demo:
        trace.start_demo(config.model, trace.DEFAULT_TRANSCODER)
    return config, load_session(config, device=args.device)


def feature_index(session) -> FeatureIndex:
    from qwen_interp.apps.features.collect import blocks
    return FeatureIndex(blocks(session))
