"""qwen-interp's pytest plugin is registered in every pytest session of an environment that has
qwen-interp installed (``pytest11`` entry point). A project that does not opt in must run
against untouched upstream packages: nothing of qwen-interp imported, no adapter armed."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = """
import os, sys

def armed():
    import transformer_lens.supported_models as sm
    return "Qwen/Qwen3-1.7B-Base" in sm.OFFICIAL_MODEL_NAMES

def test_probe(pytestconfig{fixture}):
    assert pytestconfig.getini("qwen_offline_hub") is {ini}  # the plugin is loaded
    print("STATE", "qwen_interp" in sys.modules, armed(), os.environ.get("HF_HUB_OFFLINE"))
"""


def run_project(tmp_path, ini: str = "", args=(), fixture: str = "") -> list[str]:
    """pytest in a fresh project of one test, with the installed plugins; the probe's line."""
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE.format(
        fixture=fixture, ini="qwen_offline_hub" in ini)))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "HF_", "QWEN_INTERP_TEST_")) and k != "HF_HOME"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return next(line for line in proc.stdout.splitlines() if line.startswith("STATE")).split()[1:]


def test_entry_point_is_outside_the_qwen_interp_package():
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="pytest11")
             if ep.dist is not None and ep.dist.name == "qwen-interp"]
    assert ep.value == "qwen_interp_pytest", (
        f"pytest11 entry point {ep.value!r}: importing anything under qwen_interp arms the "
        "adapters in every pytest session (reinstall after changing pyproject.toml)")


@pytest.mark.slow
@pytest.mark.subprocess
def test_project_without_opt_in_sees_upstream_untouched(tmp_path):
    assert run_project(tmp_path) == ["False", "False", "None"]


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("ini, args", [("qwen_offline_hub = true", ()),
                                       ("", ("--qwen-offline-hub",))])
def test_opting_in_arms_the_adapters_offline(tmp_path, ini, args):
    assert run_project(tmp_path, ini=ini, args=args) == ["True", "True", "1"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_requesting_a_fixture_opts_that_test_in(tmp_path):
    imported, armed, _ = run_project(tmp_path, fixture=", qwen_registry")
    assert imported == "True" and armed == "True"
