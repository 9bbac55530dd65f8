"""Shared fixtures. The offline Hub comes from qwen-interp's own pytest plugin
(``qwen_offline_hub``, enabled in pyproject.toml); nothing here reaches the network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SEED_PROMPT = "Fact: The president of the United States in 2010 was"


@pytest.fixture(scope="session")
def qwen3_specs(qwen_registry):
    return [s for s in qwen_registry.models.values() if s.architecture == "Qwen3ForCausalLM"]


def run_python(code: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (imports and registries start pristine there)."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
