"""Shared fixtures. The offline Hub comes from qwen-interp's own pytest plugin
(``qwen_offline_hub``, enabled in pyproject.toml); nothing here reaches the network. Plain
helpers (``run_python``, ``SEED_PROMPT``, ...) are in helpers.py."""

from __future__ import annotations

import os

import pytest

from helpers import apply_rendered_patch, run_cli_in_process

THREADS = "OMP_NUM_THREADS"


def pytest_configure(config):
    """Under pytest-xdist, each worker's torch would start one thread per core, so N workers ask
    for N times the cores, and OpenMP threads spin while they wait for each other (measured:
    -12% CPU time, -12% wall on 2 cores). The controller gives each worker its share before
    the workers start; they, and the interpreters their tests start, inherit it."""
    workers = getattr(config.option, "numprocesses", None)
    controller = getattr(config.option, "dist", "no") != "no" and not hasattr(config, "workerinput")
    if not controller or not isinstance(workers, int) or workers < 1 or THREADS in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ[THREADS] = str(max(1, (cores or 1) // workers))
    config._qwen_set_threads = True


def pytest_unconfigure(config):
    if getattr(config, "_qwen_set_threads", False):
        os.environ.pop(THREADS, None)

# Under pytest-xdist (`-n auto`) every worker is its own session with its own private offline
# Hub, on purpose: sharing one would couple workers through tests that change a shared snapshot
# for a moment (test_clt_replacement hides a config.yaml) or that build the same repo id with
# other parameters (the first builder wins), making the content depend on timing.


@pytest.fixture(scope="session")
def qwen3_specs(qwen_registry):
    return [s for s in qwen_registry.models.values() if s.architecture == "Qwen3ForCausalLM"]


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args, env=None, cwd=None)``: ``qwen-interp ARGS`` run in this process
    (``helpers.run_cli_in_process``), a ``CompletedProcess`` like a console-script run's."""
    def run(*args, env: dict | None = None, cwd=None):
        return run_cli_in_process(args, capsys, monkeypatch, env=env, cwd=cwd)
    return run


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
