"""Writing a map: ``<name>.json`` (docs/topology.md, "Format") and ``<name>.png``.

Node positions are the mean of the members' first two PCA coordinates: the lens plane itself,
so the picture is Mapper's own layout and costs nothing at any size (no force layout).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .build import TopologyMap

FORMAT = "qwen-interp-topology"
VERSION = 1
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"--name {name!r}: letters, digits, '.', '_' and '-' only (it names "
                         "the files)")
    return name


def to_json(tmap: TopologyMap, name: str) -> dict:
    v = tmap.vectors
    xy = tmap.pca.scores[:, :2] if tmap.pca.scores.shape[1] >= 2 else np.c_[
        tmap.pca.scores[:, 0], np.zeros(len(tmap.pca.scores))]
    levels = []
    for li, level in enumerate(tmap.levels):
        labels = tmap.labels[li] if li < len(tmap.labels) else [{} for _ in level.nodes]
        nodes = []
        for i, members in enumerate(level.nodes):
            x, y = xy[members].mean(axis=0).tolist()
            nodes.append({"id": i, "size": int(len(members)), "x": round(x, 5),
                          "y": round(y, 5), "parent": level.parents[i],
                          "contained": bool(level.contained[i]), **labels[i],
                          "members": members.tolist()})
        levels.append({"resolution": level.resolution, "n_nodes": len(level.nodes),
                       "n_edges": len(level.edges), "components": level.components,
                       "cycle_rank": level.cycle_rank, "nodes": nodes,
                       "edges": [[int(a), int(b), int(c)] for a, b, c in level.edges]})
    return {
        "format": FORMAT, "version": VERSION, "name": name,
        "dictionary": {"id": v.dictionary, "name": v.name, "layers": list(v.layers),
                       "width": v.width},
        "source": v.source, "n_features": v.n, "dim": v.dim,
        "members": "row i is feature i % width of layer layers[i // width]",
        "settings": tmap.settings_dict(),
        "pca": {"explained_variance_ratio": [round(float(r), 6)
                                             for r in tmap.pca.explained_ratio]},
        "seconds": tmap.seconds,
        "levels": levels,
    }


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_map(tmap: TopologyMap, out: str | Path, name: str) -> tuple[Path, Path]:
    """``out/<name>.json`` and ``out/<name>.png``; returns both paths."""
    check_name(name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(tmap, name)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    _atomic_write(json_path, json.dumps(data, separators=(",", ":")).encode())
    draw_png(data, png_path)
    return json_path, png_path


def read_map(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a topology map ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a topology map (no \"format\": \"{FORMAT}\")")
    return data


def draw_png(data: dict, path: str | Path) -> None:
    """One panel per resolution: nodes at their lens position, area by size, colour by the
    dominant layer, edges grey."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    levels = data["levels"]
    layers = data["dictionary"]["layers"]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, max(len(levels), 1), figsize=(5 * max(len(levels), 1), 5),
                             squeeze=False)
    for ax, level in zip(axes[0], levels):
        nodes = level["nodes"]
        if nodes:
            x = np.array([n["x"] for n in nodes])
            y = np.array([n["y"] for n in nodes])
            size = np.array([n["size"] for n in nodes], dtype=float)
            segments = [((x[a], y[a]), (x[b], y[b])) for a, b, _ in level["edges"]]
            ax.add_collection(LineCollection(segments, colors="0.6", linewidths=0.8, zorder=1))
            slot = np.array([layers.index(n.get("dominant_layer", layers[0]))
                             if n.get("dominant_layer", layers[0]) in layers else 0
                             for n in nodes])
            colour = cmap(slot / max(len(layers) - 1, 1))
            ax.scatter(x, y, s=20 + 300 * np.sqrt(size / size.max()), c=colour,
                       edgecolors="black", linewidths=0.4, zorder=2)
            ax.autoscale_view()
        ax.set_title(f"resolution {level['resolution']}: {level['n_nodes']} nodes, "
                     f"{level['n_edges']} edges, {level['cycle_rank']} cycles", fontsize=9)
        ax.set_xlabel("PC1")
        ax.set_ylabel("PC2")
    fig.suptitle(f"{data['name']}: {data['source']} vectors of {data['n_features']} "
                 f"{data['dictionary']['id']} features ({data['dictionary']['name']})",
                 fontsize=10)
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
