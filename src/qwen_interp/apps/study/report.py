"""The study's report: a JSON record, a Markdown and an HTML page, a group diagram and the plots.

Everything is rendered from the JSON record (``study.json``), so a report can be rebuilt from a
saved record alone (``write_report(record, folder)``). The record's fields are documented in
docs/study.md. Plots use matplotlib's non-interactive Agg backend and are written as PNG files;
the HTML page embeds them (base64), so it is one self-contained file that opens offline.
"""

from __future__ import annotations

import base64
import functools
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qwen_interp.atomic import replace_file

RECORD_VERSION = 1
FILES = {"record": "study.json", "markdown": "report.md", "html": "report.html",
         "diagram": "groups.png", "sweeps": "sweeps.png"}
TOP_IN_TABLE = 5


def pct(p: float) -> str:
    return f"{100 * p:.1f}%"


def show_token(token: str) -> str:
    """A token as the tables show it: quoted, whitespace made visible."""
    return repr(token)


def top_cell(top: list[dict], k: int = TOP_IN_TABLE) -> str:
    return ", ".join(f"{show_token(t['token'])} {pct(t['p'])}" for t in top[:k])


# --- plots ---------------------------------------------------------------------------------------
def _pyplot():
    import warnings

    import matplotlib
    # Tokens the installed fonts lack (CJK, for example) are drawn as boxes; say nothing.
    warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
    matplotlib.use("Agg")  # files only: no display, same output everywhere
    import matplotlib.pyplot as plt
    return plt


def plot_sweeps(record: dict, path: Path) -> Path | None:
    """The target token's probability against strength, one line per group; None without
    sweeps."""
    sweeps = record.get("sweeps") or []
    if not sweeps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for sweep in sweeps:
        ax.plot(sweep["strengths"], sweep["target_p"], marker="o", label=sweep["group"])
    clean = record["clean"].get("target_p")
    if clean is not None:
        ax.axhline(clean, color="grey", linestyle=":", linewidth=1, label="unsteered")
    mode = sweeps[0]["mode"]
    ax.set_xlabel("scale of the group's activations" if mode == "scale" else f"{mode} strength")
    ax.set_ylabel(f"p({show_token(record['target']['token'])})")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("Target probability under each group's intervention", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_groups(record: dict, path: Path) -> Path | None:
    """The group diagram: input tokens along x, layers along y; each group a box around its
    nodes with its label, arrows for the strongest group-to-group and group-to-target edges (width
    by weight). None without groups that have nodes in the graph."""
    groups = [g for g in record.get("groups", []) if g["nodes"]]
    if not groups:
        return None
    plt = _pyplot()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
    tokens = record["tokens"]
    n_layers = record["n_layers"]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.75 * len(tokens)), 4.8), dpi=110)
    colours = plt.get_cmap("tab10").colors
    centres: dict[str, tuple[float, float]] = {}
    for i, group in enumerate(groups):
        xs = [n["position"] for n in group["nodes"]]
        ys = [n["layer"] for n in group["nodes"]]
        x0, x1, y0, y1 = min(xs) - 0.4, max(xs) + 0.4, min(ys) - 0.35, max(ys) + 0.35
        colour = colours[i % len(colours)]
        ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0,
                                    boxstyle="round,pad=0.02,rounding_size=0.15",
                                    facecolor=(*colour, 0.18), edgecolor=colour, linewidth=1.5))
        ax.scatter(xs, ys, s=14, color=colour, zorder=3)
        # names, not labels: labels are long (the table has them); staggered so that groups on
        # neighbouring tokens stay readable
        ax.text((x0 + x1) / 2, y1 + 0.08 + 0.28 * (i % 2), group["name"], ha="center",
                va="bottom", fontsize=8, color=colour, fontweight="bold")
        centres[group["name"]] = ((x0 + x1) / 2, (y0 + y1) / 2)
    target_xy = (len(tokens) - 1, n_layers + 0.6)
    centres["target"] = target_xy
    ax.text(*target_xy, show_token(record["target"]["token"]), ha="center", va="center",
            fontsize=9, bbox=dict(boxstyle="round", facecolor="white", edgecolor="black"))
    edges = sorted(record.get("group_edges", []), key=lambda e: -abs(e["weight"]))[:12]
    top = max((abs(e["weight"]) for e in edges), default=0.0) or 1.0
    for edge in edges:
        if edge["source"] not in centres or edge["target"] not in centres:
            continue
        colour = "#3a7" if edge["weight"] >= 0 else "#b44"
        ax.add_patch(FancyArrowPatch(centres[edge["source"]], centres[edge["target"]],
                                     arrowstyle="-|>", mutation_scale=10, color=colour,
                                     linewidth=0.5 + 3.5 * abs(edge["weight"]) / top,
                                     alpha=0.75, connectionstyle="arc3,rad=0.15", zorder=2))
    ax.set_xticks(range(len(tokens)))
    ax.set_xticklabels([t.replace("\n", "\\n") for t in tokens], rotation=40, ha="right",
                       fontsize=8)
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels([f"L{layer}" for layer in range(n_layers)], fontsize=8)
    ax.set_xlim(-0.8, len(tokens) - 0.2)
    ax.set_ylim(-0.8, n_layers + 1.2)
    ax.set_title("Feature groups (boxes) and their strongest effects (arrows: green excites, "
                 "red inhibits)", fontsize=9)
    ax.grid(alpha=0.15)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# --- Markdown and HTML ---------------------------------------------------------------------------
def _group_rows(record: dict) -> list[list[str]]:
    rows = []
    for g in record.get("groups", []):
        positions = sorted({n["position"] for n in g["nodes"]})
        layers = sorted({n["layer"] for n in g["nodes"]})
        where = ", ".join(f"{p} {show_token(record['tokens'][p])}" for p in positions)
        rows.append([g["name"], g["label"], str(len(g["nodes"])), where,
                     f"{layers[0]}-{layers[-1]}" if layers else "", g.get("description", "")])
    return rows


def _intervention_rows(record: dict) -> list[list[str]]:
    target = record["target"]["token"]
    rows = [["unsteered", "", pct(record["clean"]["target_p"]), top_cell(record["clean"]["top"])]]
    for item in record.get("interventions", []):
        setting = f"{item['mode']} {item['strength']:g}" if item["mode"] != "ablate" else "ablate"
        rows.append([item["group"], setting, pct(item["target_p"]), top_cell(item["top"])])
    del target
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return lines


def markdown(record: dict, images: dict[str, str]) -> str:
    target = show_token(record["target"]["token"])
    lines = [f"# Circuit study: {record['prompt']!r}", "",
             f"Model `{record['model']}`, transcoder `{record['transcoder']}`; "
             f"{len(record['tokens'])} tokens (the first is circuit-tracer's prepended "
             f"`<|endoftext|>`). Target {target}: p = {pct(record['clean']['target_p'])} "
             "unsteered.", "",
             f"Unsteered top-{TOP_IN_TABLE}: {top_cell(record['clean']['top'])}", "",
             "## Feature groups", "",
             f"Groups: {record['grouping']['how']}.", ""]
    if "diagram" in images:
        lines += [f"![groups]({images['diagram']})", ""]
    lines += _md_table(["group", "label", "features", "positions", "layers", "why"],
                       _group_rows(record))
    lines += ["", "## Interventions", "",
              "Each row sets the group's CLT features at their positions (circuit-tracer's "
              "`feature_intervention` semantics: attention patterns frozen, the change written "
              "through the CLT decoder into later MLP outputs, the real model running on); SAE "
              "features are steered with Qwen-Scope's convention.", ""]
    lines += _md_table(["group", "intervention", f"p({target})", f"top-{TOP_IN_TABLE}"],
                       _intervention_rows(record))
    if record.get("sweeps"):
        lines += ["", "## Strength sweeps", ""]
        if "sweeps" in images:
            lines += [f"![sweeps]({images['sweeps']})", ""]
        strengths = record["sweeps"][0]["strengths"]
        lines += _md_table(["group"] + [f"{s:g}" for s in strengths],
                           [[s["group"]] + [pct(p) for p in s["target_p"]]
                            for s in record["sweeps"]])
    if record.get("command"):
        lines += ["", "## Reproduce", "", "```bash", record["command"], "```"]
    return "\n".join(lines) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}
code{background:#f3f3f3;padding:1px 4px}"""


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_page(record: dict, image_files: dict[str, Path]) -> str:
    target = show_token(record["target"]["token"])

    def img(key: str, alt: str) -> str:
        if key not in image_files:
            return ""
        data = base64.b64encode(image_files[key].read_bytes()).decode("ascii")
        return f'<img alt="{alt}" src="data:image/png;base64,{data}">'

    parts = [f"<h1>Circuit study: {html.escape(repr(record['prompt']))}</h1>",
             f"<p>Model <code>{html.escape(record['model'])}</code>, transcoder "
             f"<code>{html.escape(record['transcoder'])}</code>. Target "
             f"{html.escape(target)}: p = {pct(record['clean']['target_p'])} unsteered.</p>",
             "<h2>Feature groups</h2>",
             f"<p>Groups: {html.escape(record['grouping']['how'])}.</p>", img("diagram", "groups"),
             _html_table(["group", "label", "features", "positions", "layers", "why"],
                         _group_rows(record)),
             "<h2>Interventions</h2>",
             _html_table(["group", "intervention", f"p({target})", f"top-{TOP_IN_TABLE}"],
                         _intervention_rows(record))]
    if record.get("sweeps"):
        strengths = record["sweeps"][0]["strengths"]
        parts += ["<h2>Strength sweeps</h2>", img("sweeps", "sweeps"),
                  _html_table(["group"] + [f"{s:g}" for s in strengths],
                              [[s["group"]] + [pct(p) for p in s["target_p"]]
                               for s in record["sweeps"]])]
    if record.get("command"):
        parts += ["<h2>Reproduce</h2>", f"<pre>{html.escape(record['command'])}</pre>"]
    title = html.escape(f"Circuit study: {record['prompt']}")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def write_text(path: Path, text: str) -> Path:
    replace_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def write_report(record: dict[str, Any], folder: str | Path) -> dict[str, Path]:
    """Write ``study.json``, the plots, ``report.md`` and ``report.html`` into ``folder``; every
    file atomically. Returns the paths written, by kind."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["record"] = write_text(out / FILES["record"],
                                   json.dumps(record, indent=1, ensure_ascii=False))
    images: dict[str, Path] = {}
    has_content = {"diagram": any(g["nodes"] for g in record.get("groups", [])),
                   "sweeps": bool(record.get("sweeps"))}
    plots: dict[str, Callable[[dict, Path], Path | None]] = {"diagram": plot_groups,
                                                             "sweeps": plot_sweeps}
    for key, plot in plots.items():
        if not has_content[key]:  # nothing to draw: no empty image, none left over
            (out / FILES[key]).unlink(missing_ok=True)
            continue
        replace_file(out / FILES[key], functools.partial(plot, record))
        images[key] = written[key] = out / FILES[key]
    written["markdown"] = write_text(out / FILES["markdown"],
                                     markdown(record, {k: p.name for k, p in images.items()}))
    written["html"] = write_text(out / FILES["html"], html_page(record, images))
    return written
