"""The seed study as one call: trace a prompt, name its feature groups (given or proposed), test
each group by intervening on it, and write the report.

``run_study(StudyConfig(...))`` is the Python API behind ``qwen-interp study``:

1. ``attribute()`` the prompt through the CLT (circuit-tracer, as ``qwen-interp trace`` does);
2. groups from a YAML file / a ``GroupSet`` (validated against the graph), or proposed by
   :func:`autogroup.propose_groups` (the proposal is saved as ``groups.yaml`` to edit and rerun);
3. every group ablated, and scaled over ``strengths``, evaluated in one batched forward pass
   after the clean one (:func:`interventions.evaluate`, circuit-tracer's ``feature_intervention``
   semantics);
4. ``study.json`` + ``report.md`` + ``report.html`` + plots (:mod:`report`) and the graph
   (``graph.pt``, ``Graph.from_pt``).
"""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_interp.apps.trace import DEFAULT_MODEL, DEFAULT_TRANSCODER, SEED_PROMPT

DEFAULT_OUT = "study_out"
DEFAULT_STRENGTHS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0)
DEFAULT_MAX_GROUPS = 6


@dataclass
class StudyConfig:
    model: str = DEFAULT_MODEL
    transcoder: str = DEFAULT_TRANSCODER
    prompt: str = SEED_PROMPT
    groups: Any = None  # a YAML path, a GroupSet or a list of FeatureGroup; None: proposed
    features_dir: str | Path | None = None  # names proposed groups from feature statistics
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    mode: str = "scale"
    target: str | int | None = None  # default: the unsteered top-1 token
    top_k: int = 10
    max_groups: int = DEFAULT_MAX_GROUPS
    out_dir: str | Path = DEFAULT_OUT
    device: str | None = None
    dtype: str = "float32"
    max_feature_nodes: int = 8192
    batch_size: int = 256
    command: str | None = None  # shown in the report's "Reproduce" section

    def check(self) -> None:
        """Bad values, before any loading: one ValueError naming the value."""
        from .interventions import MODES
        if self.mode not in MODES or self.mode == "ablate":
            raise ValueError(f"mode {self.mode!r}: expected one of "
                             f"{', '.join(m for m in MODES if m != 'ablate')} (every group is "
                             "also ablated)")
        if not self.strengths:
            raise ValueError("strengths: expected at least one number")
        if self.max_groups < 1 or self.top_k < 1:
            raise ValueError("max_groups and top_k must be at least 1")
        if self.features_dir is not None and not Path(self.features_dir).is_dir():
            raise ValueError(f"--features {self.features_dir}: no such folder")
        if isinstance(self.groups, (str, Path)) and not Path(self.groups).is_file():
            raise ValueError(f"--groups {self.groups}: no such file")


@dataclass
class Study:
    record: dict[str, Any]
    graph: Any
    groups: Any  # GroupSet
    result: Any  # interventions.InterventionResult
    files: dict[str, Path] = field(default_factory=dict)


def load_groups(groups):
    from .groups import GroupSet
    if groups is None or isinstance(groups, GroupSet):
        return groups
    if isinstance(groups, (str, Path)):
        return GroupSet.load(groups)
    return GroupSet(list(groups))


def choose_groups(config: StudyConfig, graph, model):
    """The given groups (validated against the graph) or the proposal, capped at
    ``max_groups`` (the most influential first)."""
    from .autogroup import propose_groups
    from .groups import GroupSet, validate_against
    given = load_groups(config.groups)
    if given is not None:
        validate_against(given, graph)
        source = config.groups if isinstance(config.groups, (str, Path)) else "Python"
        return given, f"given ({source})"
    proposed = propose_groups(graph, model=model, features_dir=config.features_dir)
    how = (f"proposed automatically from the graph ({len(proposed)} groups of 2+ features; the "
           f"{min(len(proposed), config.max_groups)} most influential kept)")
    return GroupSet(proposed[:config.max_groups], prompt=config.prompt), how


def build_record(config: StudyConfig, graph, groups, result, how: str) -> dict[str, Any]:
    from .group_graph import group_summary
    from .groups import graph_feature_nodes
    from .report import RECORD_VERSION
    outcome = result.to_dict()
    summary = group_summary(graph, list(groups), result.target.id)
    nodes = {node.key: value for node, value in graph_feature_nodes(graph).items()}
    return {
        "version": RECORD_VERSION, "prompt": config.prompt, "model": config.model,
        "transcoder": config.transcoder, "tokens": outcome["tokens"],
        "n_layers": int(graph.cfg.n_layers),
        "target": outcome["target"],
        "clean": outcome["clean"],
        "grouping": {"how": how},
        "groups": [{"name": g.name, "label": g.label, "description": g.description,
                    "influence": summary["influence"][g.name],
                    "nodes": [{"layer": n.layer, "position": n.position, "feature": n.feature,
                               "dictionary": n.dictionary,
                               "activation": nodes.get((n.layer, n.position, n.feature))}
                              for n in g.nodes]}
                   for g in groups],
        "group_edges": summary["edges"],
        "interventions": [o for o in outcome["interventions"] if o["mode"] == "ablate"],
        "sweeps": [s for s in outcome["sweeps"] if s["mode"] == config.mode],
        "command": config.command,
    }


def run_study(config: StudyConfig, echo=print, model=None) -> Study:
    """The whole study; ``model``: an already loaded ``ReplacementModel`` (else loaded from
    ``config.model``/``config.transcoder``)."""
    config.check()
    from qwen_interp.apps import trace

    from .interventions import Intervention, evaluate
    from .report import write_report
    if model is None:
        model = trace.load_replacement_model(config.model, config.transcoder,
                                             device=config.device, dtype=config.dtype)
    graph = trace.attribute_prompt(config.prompt, model, batch_size=config.batch_size,
                                   max_feature_nodes=config.max_feature_nodes)
    groups, how = choose_groups(config, graph, model)
    settings = [Intervention(g, "ablate") for g in groups]
    settings += [Intervention(g, config.mode, s) for g in groups for s in config.strengths]
    result = evaluate(model, config.prompt, settings, top_k=config.top_k, target=config.target)
    record = build_record(config, graph, groups, result, how)
    out = Path(config.out_dir)
    files = write_report(record, out)
    groups.save(out / "groups.yaml")
    graph.to_pt(str(out / "graph.pt"))
    files.update(groups=out / "groups.yaml", graph=out / "graph.pt")
    study = Study(record, graph, groups, result, files)
    for line in summary_lines(study):
        echo(line)
    return study


def summary_lines(study: Study) -> list[str]:
    rec = study.record
    target = rec["target"]["token"]
    lines = [f"prompt: {rec['prompt']!r}; target {target!r}: "
             f"p = {100 * rec['clean']['target_p']:.1f}% unsteered",
             f"groups ({rec['grouping']['how']}):"]
    for g in rec["groups"]:
        positions = sorted({n["position"] for n in g["nodes"]})
        lines.append(f"  {g['name']}: {g['label'] or ''} ({len(g['nodes'])} features at "
                     f"{', '.join(repr(rec['tokens'][p]) for p in positions)})")
    lines.append("ablations:")
    ablations = dataclasses.replace(study.result, outcomes=[
        o for o in study.result.outcomes if o.intervention.mode == "ablate"])
    lines += ["  " + line for line in ablations.table(k=5).splitlines()]
    lines.append(f"report: {study.files['html']} (also {study.files['markdown'].name}, "
                 f"{study.files['record'].name}; groups to edit and rerun with --groups: "
                 f"{study.files['groups']})")
    return lines


def command_line(argv: list[str]) -> str:
    return shlex.join(["qwen-interp", "study", *argv])
