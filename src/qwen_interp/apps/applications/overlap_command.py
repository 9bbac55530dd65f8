"""``qwen-interp overlap``: feature overlap of datasets (benchmark redundancy). The method:
``overlap.py``."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwen_interp.specs import Command

DEFAULT_OUT = "overlap_out"


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int

    from .model import add_model_options
    from .overlap import DEFAULT_FRACTION, DEFAULT_MIN_FRACTION, DEFAULT_REPEATS
    parser.add_argument("datasets", nargs="+", metavar="[NAME=]PATH",
                        help="2 or more datasets: a .txt (one document per line), .jsonl or "
                             ".parquet file or a folder of them; NAME defaults to the file or "
                             "folder name without its suffix")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="folder: overlap.json, sets.json, heatmap.png, overlap.html")
    parser.add_argument("--text-field", default="text", help="JSON/Parquet text column")
    parser.add_argument("--max-docs", type=positive_int, default=None,
                        help="the first N documents of each dataset")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="a feature fires in a document when its pooled activation is "
                             "above this")
    parser.add_argument("--min-docs", type=positive_int, default=None,
                        help="documents a feature must fire in (default: from --min-fraction)")
    parser.add_argument("--min-fraction", type=float, default=DEFAULT_MIN_FRACTION,
                        help="min docs = max(1, ceil(FRACTION x documents)) unless --min-docs")
    parser.add_argument("--subsample", type=float, default=DEFAULT_FRACTION,
                        metavar="FRACTION", help="stability: each dataset's fraction kept")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="stability: subsamples (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=positive_int, default=256,
                        help="tokens per document, the first token included")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    add_model_options(parser)


def parse_datasets(values: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or ``PATH`` -> {name: path}; names must differ."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = Path(value).stem or value, value
        if not name or not path:
            raise ValueError(f"dataset {value!r}: expected NAME=PATH or PATH")
        if name in out:
            raise ValueError(f"dataset name {name!r} given twice (name them: NAME=PATH)")
        out[name] = path
    if len(out) < 2:
        raise ValueError(f"overlap needs at least 2 datasets, got {len(out)}")
    return out


def read_dataset(name: str, path: str, text_field: str, max_docs: int | None) -> list[str]:
    from itertools import islice

    from qwen_interp.apps.features.corpus import iter_documents
    if path.startswith("hf:"):
        raise ValueError(f"dataset {name}: {path}: give a local file or folder")
    docs = list(islice(iter_documents(path, text_field=text_field), max_docs))
    if not docs:
        raise ValueError(f"dataset {name}: {path}: no documents")
    return docs


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from qwen_interp.apps.trace import check_output_dir

    from . import overlap
    from .docpass import PassConfig
    from .model import start
    paths = parse_datasets(args.datasets)
    texts = {name: read_dataset(name, path, args.text_field, args.max_docs)
             for name, path in paths.items()}
    pass_config = PassConfig(max_tokens=args.max_tokens, batch_size=args.batch_size,
                             threshold=args.threshold)
    pass_config.check()
    if not 0 <= args.min_fraction <= 1:
        raise ValueError(f"--min-fraction {args.min_fraction}: expected a number in [0, 1]")
    if not 0 < args.subsample <= 1:
        raise ValueError(f"--subsample {args.subsample}: expected a number in (0, 1]")
    if args.repeats < 0:
        raise ValueError(f"--repeats {args.repeats}: expected 0 or more")
    out = check_output_dir(args.out)
    model_config, session = start(args)
    result = overlap.overlap(session, texts, threshold=args.threshold, min_docs=args.min_docs,
                             min_fraction=args.min_fraction, fraction=args.subsample,
                             repeats=args.repeats, seed=args.seed,
                             pass_config=replace(pass_config), model_config=model_config,
                             ray_address=args.ray, workers=args.workers,
                             progress=not args.no_progress)
    for name, path in paths.items():
        result["datasets"][name]["path"] = path
    written = overlap.write_outputs(result, out)
    rec = overlap.record(result)
    width = max(len(n) for n in rec["names"])
    corner = "A \\ B"
    print(f"{corner:{width}}  |A|    " + "  ".join(f"{n[:8]:>8}" for n in rec["names"]))
    for name, size, row in zip(rec["names"], rec["sizes"], rec["coverage"]):
        cells = "  ".join(f"{'-' if x is None else f'{x:.3f}':>8}" for x in row)
        print(f"{name:{width}}  {size:<5}  {cells}")
    top = rec["most_redundant"]
    if top:
        print(f"most redundant: {top['coverage']:.1%} of {top['covered']}'s features are also "
              f"{top['by']}'s")
    stab = rec["stability"]
    if stab["repeats"]:
        def num(x):
            return "-" if x is None else f"{x:.3f}"
        print(f"stability ({stab['repeats']} subsamples of {stab['fraction']:g}): Spearman mean "
              f"{num(stab['spearman_mean'])}, min {num(stab['spearman_min'])}; most redundant "
              f"pair kept {stab['top_pair_kept']}/{stab['repeats']}")
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


COMMAND = Command("overlap", "feature overlap of datasets (benchmark redundancy)",
                  configure=configure, run=run)
