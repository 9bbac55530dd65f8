"""``qwen-interp classify``: training-free classifiers from a few seed examples (fit, predict,
eval, curve). The method: ``classify.py``; the data files: ``labelled.py``."""

from __future__ import annotations

import argparse
import json
from typing import Any
from pathlib import Path

from qwen_interp.specs import Command

DEFAULT_RULE = "rule.json"


def configure(parser: argparse.ArgumentParser) -> None:
    from qwen_interp.apps.commands import positive_int

    from .classify import DEFAULT_CANDIDATES, DEFAULT_MAX_FEATURES, DEFAULT_REPEATS
    from .model import add_model_options
    sub = parser.add_subparsers(dest="classify_command", required=True,
                                parser_class=type(parser))

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--text-field", default="text")
        p.add_argument("--label-field", default="label")
        p.add_argument("--lang-field", default="lang")
        p.add_argument("--max-tokens", type=positive_int, default=None,
                       help="tokens per document, the first token included (fit: 256; "
                            "predict/eval: the rule's)")
        p.add_argument("--batch-size", type=positive_int, default=8)
        add_model_options(p)

    def fitting(p: argparse.ArgumentParser) -> None:
        p.add_argument("--positive", metavar="LABEL",
                       help="the positive label (default: the positive one of 0/1, false/true, "
                            "no/yes, negative/positive)")
        p.add_argument("--max-features", type=positive_int, default=DEFAULT_MAX_FEATURES)
        p.add_argument("--candidates", type=positive_int, default=DEFAULT_CANDIDATES,
                       help="best single features the rule may draw from")

    p = sub.add_parser("fit", help="a rule from labelled seed examples")
    p.add_argument("--train", required=True, metavar="FILE",
                   help="labelled seeds: .jsonl, .csv or .parquet with text, label[, lang]")
    p.add_argument("--out", default=DEFAULT_RULE, help=f"rule file (default {DEFAULT_RULE})")
    fitting(p)
    common(p)
    p = sub.add_parser("predict", help="apply a rule; predictions with their evidence (JSONL)")
    p.add_argument("--rule", required=True)
    p.add_argument("--input", required=True, metavar="FILE",
                   help=".jsonl, .csv, .parquet (a text field) or .txt (one text per line)")
    p.add_argument("--out", default="predictions.jsonl")
    common(p)
    p = sub.add_parser("eval", help="precision/recall/F1 of a rule on held-out data, per lang")
    p.add_argument("--rule", required=True)
    p.add_argument("--test", required=True, metavar="FILE")
    p.add_argument("--out", default=None, help="also write the report as JSON here")
    common(p)
    p = sub.add_parser("curve", help="learning curve over the fraction of seed data used")
    p.add_argument("--train", required=True, metavar="FILE")
    p.add_argument("--test", required=True, metavar="FILE")
    p.add_argument("--out", default="classify_curve", help="folder: curve.json, curve.png")
    p.add_argument("--fractions", default="0.1,0.25,0.5,1",
                   help="comma-separated fractions in (0, 1]")
    p.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS)
    p.add_argument("--seed", type=int, default=0)
    fitting(p)
    common(p)


def _out_file(value: str) -> Path:
    """Refuse an output file that cannot be written, before any work."""
    from qwen_interp.apps.trace import check_output_dir
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"--out {value}: is a folder (expected a file)")
    check_output_dir(path.parent if str(path.parent) else ".")
    return path


def _fractions(value: str) -> list[float]:
    try:
        out = [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or any(not 0 < f <= 1 for f in out):
        raise ValueError(f"--fractions {value!r}: expected comma-separated numbers in (0, 1]")
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print_metrics(name: str, m: dict) -> None:
    print(f"  {name:10} n={m['n']:<5} pos={m['positives']:<5} precision={_pct(m['precision'])}"
          f"  recall={_pct(m['recall'])}  F1={_pct(m['f1'])}  accuracy={_pct(m['accuracy'])}")


def run(args: argparse.Namespace) -> int:
    from . import classify
    from .docpass import PassConfig
    from .labelled import read_labelled
    from .model import start
    fields = dict(text_field=args.text_field, label_field=args.label_field,
                  lang_field=args.lang_field)
    command = args.classify_command
    # Everything a user typed is checked before the model loads.
    out = _out_file(args.out) if command != "curve" and args.out else None
    rule = classify.load_rule(args.rule) if command in ("predict", "eval") else None
    if command in ("fit", "curve"):
        train = read_labelled(args.train, **fields)
        positive, _ = classify.choose_positive(train.labels, args.positive, args.train)
    if command == "curve":
        from qwen_interp.apps.trace import check_output_dir
        fractions = _fractions(args.fractions)
        out_dir = check_output_dir(args.out)
    if command in ("eval", "curve"):
        test = read_labelled(args.test, **fields)
    if command == "eval":
        assert rule is not None
        classify.check_labels(rule, test)
    if command == "predict":
        data = read_labelled(args.input, require_labels=False, **fields)
    if rule is not None:  # the model's name is known before it loads; its weights after
        from .model import config_from_args
        classify.check_names(rule, config_from_args(args), args.rule)
    max_tokens = args.max_tokens or (rule.pass_config.get("max_tokens", 256) if rule else 256)
    pass_config = PassConfig(max_tokens=max_tokens, batch_size=args.batch_size)
    pass_config.check()
    model_config, session = start(args)
    kwargs: dict[str, Any] = dict(pass_config=pass_config, model_config=model_config,
                                  ray_address=args.ray, workers=args.workers,
                                  progress=not args.no_progress)
    if command == "fit":
        rule = classify.fit(session, train, positive=positive, max_features=args.max_features,
                            candidates=args.candidates, **kwargs)
        assert out is not None
        rule.save(out)
        print(f"rule: {rule.describe()}")
        _print_metrics("seeds", rule.fit["seed"])
        print(f"rule file: {out}")
    elif command == "predict":
        assert rule is not None and out is not None
        classify.check_rule(rule, session, model_config, args.rule)
        records = classify.predict(session, rule, data.texts, **kwargs)
        lines = []
        for record, label, lang in zip(records, data.labels, data.langs):
            record.update({"text": data.texts[record["index"]], "lang": lang})
            if label is not None:
                record["label"] = label
            lines.append(json.dumps(record, ensure_ascii=False))
        from qwen_interp.atomic import replace_file
        replace_file(out, lambda tmp: tmp.write_text("\n".join(lines) + "\n", encoding="utf-8"))
        n_pos = sum(r["positive"] for r in records)
        print(f"predicted {rule.positive!r} for {n_pos} of {len(records)} texts "
              f"({rule.describe()})")
        print(f"predictions: {out}")
    elif command == "eval":
        assert rule is not None
        classify.check_rule(rule, session, model_config, args.rule)
        report = classify.evaluate(session, rule, test, **kwargs)
        print(f"rule: {report['rule']}")
        _print_metrics("overall", report["overall"])
        for lang, m in report["by_lang"].items():
            _print_metrics(f"lang={lang}", m)
        if out:
            from qwen_interp.atomic import replace_file
            text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
            replace_file(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            print(f"report: {out}")
    else:
        curve = classify.learning_curve(session, train, test, positive=positive,
                                        fractions=fractions, repeats=args.repeats,
                                        seed=args.seed, max_features=args.max_features,
                                        candidates=args.candidates, **kwargs)
        from qwen_interp.atomic import replace_file
        out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(curve, indent=1, ensure_ascii=False) + "\n"
        replace_file(out_dir / "curve.json",
                     lambda tmp: tmp.write_text(text, encoding="utf-8"))
        replace_file(out_dir / "curve.png", lambda tmp: classify.plot_curve(curve, tmp))
        print(f"full seed data: held-out F1 {_pct(curve['full_f1'])}")
        for point in curve["points"]:
            print(f"  fraction {point['fraction']:<5g} seeds {min(point['seeds']):>4}"
                  f"  F1 mean {_pct(point['f1_mean'])} (min {_pct(point['f1_min'])})"
                  f"  recovered {_pct(point['recovered'])}")
        print(f"curve: {out_dir / 'curve.json'}, {out_dir / 'curve.png'}")
    return 0


COMMAND = Command("classify", "training-free classifiers from a few seed examples "
                  "(fit, predict, eval, curve)", configure=configure, run=run)
