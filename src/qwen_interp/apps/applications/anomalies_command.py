"""``qwen-interp anomalies``: features over-represented in code-switching and repetition, and a
generation monitor that reports (and can suppress) given features.

    qwen-interp anomalies CORPUS [--detectors code-switching,repetition] [--out anomalies_out]
    qwen-interp anomalies --prompts FILE [--steer sae/L:F=S]      # analyse generations instead
    qwen-interp anomalies --monitor sae/L:F[,...] --prompts FILE [--suppress clamp|subtract]

Writes ``anomalies.json`` and one ``anomalies-<detector>.png`` per detector (or ``monitor.json``)
to ``--out``; prints the ranking (or the fire counts). Method: ``applications/anomalies.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from qwen_interp.specs import Command

from .detectors import DETECTORS


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int

    from .model import add_model_options
    parser.add_argument("corpus", nargs="?", help="documents: .txt (one per line), .jsonl, "
                        ".parquet, a folder of those, or hf:NAME[:CONFIG][:SPLIT]")
    parser.add_argument("--prompts", help="prompts file (same formats): generate from each and "
                        "analyse the generations (prompt + continuation)")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help="comma-separated: code-switching, repetition (default both)")
    parser.add_argument("--ngram", type=positive_int, default=4, help="repetition: n-gram size")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="repetition: an n-gram's occurrence from this one on is flagged")
    parser.add_argument("--window", type=positive_int, default=None,
                        help="repetition: count only occurrences starting this many tokens back")
    parser.add_argument("--top", type=positive_int, default=20, help="rows printed and plotted")
    parser.add_argument("--monitor", metavar="FEATURES",
                        help="comma-separated sae/L:F to watch while generating from --prompts")
    parser.add_argument("--suppress", choices=["clamp", "subtract"], default=None,
                        help="monitor: also generate with the watched features suppressed")
    parser.add_argument("--suppress-strength", type=float, default=8.0,
                        help="the s of --suppress subtract (h -= s * W_dec[:, f])")
    parser.add_argument("--steer", action="append", default=[], metavar="FEATURE=STRENGTH",
                        help="steer generation: h += STRENGTH * W_dec[:, f] (repeatable)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=24)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=positive_int, default=256,
                        help="per document, the first token included")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--threshold", type=float, default=0.0, help="fires: activation above")
    parser.add_argument("--out", default="anomalies_out")
    add_model_options(parser)


def parse_steer(items: list[str], index) -> dict[int, dict[int, float]]:
    """``["sae/0:3=8"]`` -> ``{0: {3: 8.0}}``."""
    from .generate import merge, sae_feature
    parts = []
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            strength = float(value)
        except ValueError:
            strength = None
        if not sep or strength is None:
            raise ValueError(f"--steer {item!r}: expected FEATURE=STRENGTH, e.g. sae/0:3=8")
        layer, feature = sae_feature(index, name)
        parts.append({layer: {feature: strength}})
    return merge(*parts)


def read_texts(source: str, text_field: str, what: str) -> list[str]:
    from qwen_interp.apps.features.corpus import iter_documents
    texts = list(iter_documents(source, text_field=text_field))
    if not texts:
        raise ValueError(f"{what} {source}: no documents")
    return texts


def run(args: argparse.Namespace) -> int:
    from qwen_interp.apps.trace import check_output_dir

    from .model import start
    detectors = [d.strip() for d in args.detectors.split(",") if d.strip()]
    bad = [d for d in detectors if d not in DETECTORS]
    if bad or not detectors:
        raise ValueError(f"--detectors {args.detectors!r}: expected some of "
                         f"{', '.join(DETECTORS)}")
    if args.monitor and not args.prompts:
        raise ValueError("--monitor needs --prompts FILE (what to generate from)")
    if not args.monitor and bool(args.corpus) == bool(args.prompts):
        raise ValueError("give a CORPUS or --prompts FILE (one of them)")
    if args.suppress and not args.monitor:
        raise ValueError("--suppress goes with --monitor FEATURES")
    if args.threshold < 0:
        raise ValueError(f"--threshold must be >= 0, got {args.threshold}")
    out = check_output_dir(args.out)
    source = args.prompts or args.corpus
    texts = read_texts(source, args.text_field, "--prompts" if args.prompts else "corpus")
    config, session = start(args)
    from .model import feature_index
    index = feature_index(session)
    steer = parse_steer(args.steer, index)
    out.mkdir(parents=True, exist_ok=True)
    if args.monitor:
        return run_monitor(args, session, config, texts, steer, out)
    from .anomalies import find_anomaly_features, format_table, plot_rates
    from .docpass import PassConfig
    from .generate import generate
    generations = None
    if args.prompts:
        generations = [generate(session, p, max_new_tokens=args.max_new_tokens, add=steer,
                                temperature=args.temperature, seed=args.seed + i,
                                model_name=config.model) for i, p in enumerate(texts)]
        texts = [g.text for g in generations if g.continuation.strip()]
        if not texts:
            raise ValueError("every generation was empty (the model ended the text at once)")
    result = find_anomaly_features(
        session, texts, detectors=detectors, n=args.ngram, repeats=args.repeats,
        window=args.window,
        config=PassConfig(max_tokens=args.max_tokens, batch_size=args.batch_size,
                          threshold=args.threshold),
        model_config=config, ray_address=args.ray, workers=args.workers,
        progress=not args.no_progress)
    record = result.to_json()
    record.update(source=source, model=config.model, transcoder=config.transcoder)
    if generations is not None:
        record["generations"] = [{"prompt": g.prompt, "continuation": g.continuation}
                                 for g in generations]
    _write_json(out / "anomalies.json", record)
    print(f"{result.n_documents} documents, {result.n_tokens} tokens")
    for name, detector in result.detectors.items():
        print(format_table(detector, args.top))
        plot_rates(detector, out / f"anomalies-{name}.png", top=args.top)
    print(f"wrote {out / 'anomalies.json'} and "
          f"{', '.join(f'anomalies-{name}.png' for name in result.detectors)}")
    return 0


def run_monitor(args, session, config, prompts, steer, out: Path) -> int:
    from .anomalies import monitor
    watch = [w.strip() for w in args.monitor.split(",") if w.strip()]
    runs = monitor(session, prompts, watch, steer=steer, suppress=args.suppress,
                   suppress_strength=args.suppress_strength,
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                   seed=args.seed, threshold=args.threshold, model_name=config.model)
    from dataclasses import asdict
    record = {"watch": watch, "steer": {str(k): v for k, v in steer.items()},
              "suppress": args.suppress, "suppress_strength": args.suppress_strength,
              "runs": [asdict(r) for r in runs]}
    _write_json(out / "monitor.json", record)
    for r in runs:
        label = f"suppressed ({args.suppress})" if r.suppressed else "as generated"
        counts = ", ".join(f"{name} fires on {n}" for name, n in r.fires.items())
        print(f"{label}: {r.generated_tokens} generated tokens; {counts}")
        for event in r.events[:args.top]:
            print(f"  prompt {event['prompt']} token {event['position']} {event['token']!r}: "
                  f"{event['feature']} = {event['activation']:.3f}")
    print(f"wrote {out / 'monitor.json'}")
    return 0


def _write_json(path: Path, data) -> None:
    from qwen_interp.atomic import replace_file
    replace_file(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False)
                                                  + "\n", encoding="utf-8"))


COMMAND = Command("anomalies", "features over-represented in code-switching and repetition",
                  configure=configure, run=run)
