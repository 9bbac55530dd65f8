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


def apply_rendered_patch(distribution: str, root):
    """The released source of ``distribution`` with its rendered patch applied by `git apply`."""
    from qwen_interp.apps import upstream
    upstream.copy_released_source(distribution, root)
    diff = root.parent / f"{distribution}.patch"
    diff.write_text(upstream.render(distribution))
    proc = subprocess.run(["git", "apply", "--verbose", str(diff)], cwd=root, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cleanly" in proc.stderr and "rejected" not in proc.stderr
    return root


@pytest.fixture(scope="session")
def patched_release(tmp_path_factory):
    """``patched_release(distribution)``: its pinned release's source with every rendered patch
    applied (``apply_rendered_patch``), built once per session and shared read-only."""
    roots = {}

    def get(distribution: str):
        if distribution not in roots:
            roots[distribution] = apply_rendered_patch(
                distribution, tmp_path_factory.mktemp(distribution) / "src")
        return roots[distribution]
    return get
