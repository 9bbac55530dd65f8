"""The seed study on the built-in default, as a user runs it: `qwen-interp study --auto-groups`
on the trained demo finds groups that match the circuit planted in its training data, and
ablating them changes the answer as in BluelightAI's study (FACTS: ablating "year ~2010" gives
presidents of other decades; removing "president" gives filler words).

Metric for "recovers the planted groups": the planted year group is every active feature at the
year's digits or the final " was" whose activation moves by more than half when only the year is
swapped for years with another holder; the planted office group, every active feature at the
office word that moves when only the office word is swapped (``qwen_interp.apps.demo.circuit``).
A proposed group *recovers* a planted group when at least 80 % of its nodes are planted members
of it (precision); both groups must be recovered, each by a different proposed group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
PRECISION = 0.8

pytestmark = pytest.mark.subprocess


def cli(*args, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_interp.apps.cli", *args],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=900, cwd=cwd)


@pytest.fixture(scope="module")
def study(qwen_demo_cache, tmp_path_factory):
    work = tmp_path_factory.mktemp("study")
    out = cli("study", "--auto-groups", env={"QWEN_INTERP_CACHE": str(qwen_demo_cache)},
              cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    record = json.loads((work / "study_out" / "study.json").read_text())
    check = subprocess.run(
        [sys.executable, str(HERE / "study_demo_check.py"), str(work / "study_out")],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "HF_HOME": str(qwen_demo_cache / "demo-hf"), "HF_HUB_OFFLINE": "1"})
    assert check.returncode == 0, check.stderr
    return {"stdout": out.stdout, "record": record, "work": work, "cache": qwen_demo_cache,
            "check": json.loads(check.stdout.strip().splitlines()[-1])}


def recovering(study, planted: str) -> list[str]:
    """Proposed groups whose nodes are at least PRECISION planted members of ``planted``."""
    return [name for name, share in study["check"]["precision"].items()
            if share[planted] >= PRECISION]


def ablation(study, group: str) -> dict:
    return next(i for i in study["record"]["interventions"] if i["group"] == group)


def test_the_seed_prompt_is_answered_right(study):
    clean = study["record"]["clean"]
    assert clean["top"][0]["token"] == " Barack" and clean["top"][0]["p"] >= 0.5
    assert study["record"]["target"]["token"] == " Barack"


def test_automatic_grouping_recovers_the_planted_year_and_office_groups(study):
    year, office = recovering(study, "year"), recovering(study, "office")
    assert year and office, study["check"]
    assert set(year).isdisjoint(office)


def test_ablating_the_year_group_gives_another_holder_of_the_office(study):
    presidents = set(study["check"]["us_presidents"])
    for group in recovering(study, "year")[:1]:  # the most influential year group
        top = ablation(study, group)["top"]
        assert top[0]["token"] in presidents - {" Barack"}, (group, top)


def test_ablating_the_office_group_removes_names_from_the_top_5(study):
    names = set(study["check"]["names"])
    for group in recovering(study, "office")[:1]:
        top5 = [t["token"] for t in ablation(study, group)["top"][:5]]
        assert not names & set(top5), (group, top5)


def test_the_report_and_the_command_output(study):
    out = study["work"] / "study_out"
    for name in ("report.html", "report.md", "study.json", "groups.png", "sweeps.png",
                 "groups.yaml", "graph.pt"):
        assert (out / name).is_file(), name
    assert "ablations:" in study["stdout"] and "report: study_out/report.html" in study["stdout"]
    md = (out / "report.md").read_text()
    assert "| unsteered |" in md and "## Strength sweeps" in md
    # The proposal, given back as groups, reproduces the same ablations.
    again = cli("study", "--groups", "study_out/groups.yaml", "--out", "again",
                env={"QWEN_INTERP_CACHE": str(study["cache"])}, cwd=study["work"])
    assert again.returncode == 0, again.stderr
    rerun = json.loads((study["work"] / "again" / "study.json").read_text())
    assert [g["name"] for g in rerun["groups"]] == [g["name"] for g in study["record"]["groups"]]
    for first, second in zip(study["record"]["interventions"], rerun["interventions"]):
        assert first["top"][0]["token"] == second["top"][0]["token"]
        assert second["target_p"] == pytest.approx(first["target_p"], abs=1e-5)
