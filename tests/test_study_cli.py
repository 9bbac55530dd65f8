"""`qwen-interp study` refuses bad input in one line, before any model is loaded or any file
written."""

from __future__ import annotations

import pytest


def one_line(out) -> str:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("qwen-interp study: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (("--strengths", "1,x"), "argument --strengths: '1,x': expected comma-separated numbers"),
    (("--strengths", "1,nan"), "expected finite comma-separated numbers"),
    (("--groups", "missing.yaml"), "--groups missing.yaml: no such file"),
    (("--features", "nowhere"), "--features nowhere: no such folder"),
    (("--model", "Qwen/Qwen3-1.7B-Base"), "--model and --transcoder go together"),
    (("--max-groups", "0"), "argument --max-groups: must be at least 1, got 0"),
    (("--groups", "g.yaml", "--auto-groups"), "not allowed with argument"),
    (("--prompt", " "), "the prompt is empty"),
])
def test_bad_arguments_fail_in_one_line(args, message, cli, tmp_path):
    (tmp_path / "g.yaml").write_text("groups: []\n")
    out = cli("study", *args, env={"QWEN_INTERP_CACHE": str(tmp_path / "cache")}, cwd=tmp_path)
    assert message in one_line(out), out.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "study_out").exists()


def test_a_bad_groups_file_names_the_file_and_entry(cli, tmp_path):
    (tmp_path / "g.yaml").write_text("groups:\n  - name: year\n    nodes: [[1, -2, 3]]\n")
    out = cli("study", "--groups", "g.yaml", env={"QWEN_INTERP_CACHE": str(tmp_path / "cache")},
              cwd=tmp_path)
    line = one_line(out)
    assert "g.yaml" in line and "position must be a non-negative integer, got -2" in line, line
    assert not (tmp_path / "cache").exists()
