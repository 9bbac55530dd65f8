"""The study report renders from its JSON record alone: Markdown and HTML tables carry the
numbers of the record, the plots are real PNG images with content, and nothing half-written is
left behind."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from qwen_interp.apps.study.report import FILES, markdown, write_report


def record() -> dict:
    tokens = ["<|endoftext|>", "Fact", ":", " The", " president", " of", " the", " United",
              " States", " in", " ", "2", "0", "1", "0", " was"]
    node = {"layer": 1, "position": 4, "feature": 7, "dictionary": "clt", "activation": 2.5}
    return {
        "version": 1, "prompt": "Fact: The president of the United States in 2010 was",
        "model": "Qwen/Qwen3-1.7B-Base", "transcoder": "bluelightai/clt-qwen3-1.7b-base-20k",
        "tokens": tokens, "n_layers": 4,
        "target": {"token": " Barack", "id": 70738},
        "clean": {"target_p": 0.74, "top": [{"token": " Barack", "p": 0.74},
                                            {"token": " Obama", "p": 0.07}]},
        "grouping": {"how": "proposed automatically"},
        "groups": [
            {"name": "office", "label": "president", "description": "on ' president'",
             "nodes": [node, {**node, "layer": 2, "feature": 9}]},
            {"name": "year", "label": "year ~2010", "description": "on the year digits",
             "nodes": [{**node, "position": 14, "feature": 3}]},
        ],
        "group_edges": [{"source": "office", "target": "target", "weight": 1.5},
                        {"source": "year", "target": "office", "weight": -0.4}],
        "interventions": [
            {"group": "year", "mode": "ablate", "strength": 0.0, "target_p": 0.05,
             "top": [{"token": " George", "p": 0.61}, {"token": " Barack", "p": 0.05}]},
        ],
        "sweeps": [{"group": "year", "mode": "scale", "strengths": [-1.0, 0.0, 1.0, 2.0],
                    "target_p": [0.01, 0.05, 0.74, 0.8]},
                   {"group": "office", "mode": "scale", "strengths": [-1.0, 0.0, 1.0, 2.0],
                    "target_p": [0.0, 0.02, 0.74, 0.9]}],
        "command": "qwen-interp study --auto-groups",
    }


def png_has_content(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 20, f"{path} looks blank"


def test_every_file_is_written_and_the_tables_carry_the_numbers(tmp_path):
    written = write_report(record(), tmp_path)
    assert set(written) == {"record", "markdown", "html", "diagram", "sweeps"}
    assert json.loads((tmp_path / FILES["record"]).read_text()) == record()
    for key in ("diagram", "sweeps"):
        png_has_content(written[key])
    md = written["markdown"].read_text()
    assert "| year | ablate | 5.0% | ' George' 61.0%, ' Barack' 5.0% |" in md
    assert "| unsteered |  | 74.0% |" in md
    assert "| year | 1.0% | 5.0% | 74.0% | 80.0% |" in md  # the sweep row
    assert "![groups](groups.png)" in md and "![sweeps](sweeps.png)" in md
    page = written["html"].read_text()
    assert page.count("data:image/png;base64,") == 2  # self-contained: opens offline
    assert "&#x27; George&#x27; 61.0%" in page
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left"


def test_a_record_without_sweeps_or_groups_writes_no_empty_images(tmp_path):
    bare = {**record(), "sweeps": [], "groups": [], "group_edges": []}
    written = write_report(bare, tmp_path)
    assert "sweeps" not in written and "diagram" not in written
    assert not (tmp_path / "sweeps.png").exists() and not (tmp_path / "groups.png").exists()
    assert "Strength sweeps" not in written["markdown"].read_text()


def test_markdown_escapes_table_cells():
    rec = record()
    rec["interventions"][0]["top"] = [{"token": "a|b", "p": 0.5}]
    assert "'a\\|b' 50.0%" in markdown(rec, {})
