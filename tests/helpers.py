"""Helpers shared by the test modules (``from helpers import ...``). Fixtures live in conftest.py;
pytest discourages importing conftest, so plain functions and constants live here."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings

SEED_PROMPT = "Fact: The president of the United States in 2010 was"


def run_python(code: str, env: dict | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (imports and registries start pristine there). Use it
    only when the test is about a fresh process: import order, import side effects, exit."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_on_demo(script: str, *args: str, cache) -> dict:
    """Run ``script`` (given ``args`` as argv) in a fresh interpreter on the trained demo in
    ``cache`` (the ``qwen_demo_cache`` fixture) and return the JSON of its last output line. A
    fresh process because pytest's offline Hub fixes this process's HF cache at import, so the
    demo's cache cannot be switched to here."""
    env = {**os.environ, "QWEN_INTERP_CACHE": str(cache), "HF_HOME": str(cache / "demo-hf"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cli_on_demo(args, cache, cwd) -> subprocess.CompletedProcess:
    """``qwen-interp ARGS`` in a fresh process, in ``cwd``, on the trained demo in ``cache``."""
    return subprocess.run([sys.executable, "-m", "qwen_interp.apps.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=900, cwd=cwd,
                          env={**os.environ, "QWEN_INTERP_CACHE": str(cache)})


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


class _StderrRecords(logging.Handler):
    """What a fresh process would print on stderr for log records: with no handler configured,
    Python's last-resort handler writes each WARNING-or-worse message on its own line."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_cli_in_process(args, capsys, monkeypatch, env: dict | None = None,
                       cwd=None) -> subprocess.CompletedProcess:
    """``qwen-interp ARGS`` through ``qwen_interp.apps.cli.main`` in this process: the exit code,
    stdout and stderr a console-script run gives, without starting an interpreter (seconds each).
    stderr also gets what a fresh process would print there for warnings and for WARNING records
    that reach the root logger (qwen-interp's), so one-line-error checks stay as strict. Only for
    commands that need no fresh process: not for `trace` on the demo Hub (it sets HF_HOME before
    huggingface_hub is imported) nor for settings read at import (QWEN_INTERP_PLUGINS)."""
    from qwen_interp.apps.cli import main
    capsys.readouterr()  # only this command's output
    handler = _StderrRecords()
    root = logging.getLogger()
    with monkeypatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # Python's defaults: each warning once per place ...
        for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning,
                      ResourceWarning):  # ... and these not at all outside __main__
            warnings.simplefilter("ignore", quiet)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        if cwd is not None:
            patch.chdir(cwd)
        root.addHandler(handler)
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's usage errors, as the console script exits
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        finally:
            root.removeHandler(handler)
    out = capsys.readouterr()
    stderr = out.err + "".join(f"{line}\n" for line in handler.lines)
    stderr += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                      for w in caught)
    return subprocess.CompletedProcess(["qwen-interp", *map(str, args)], code, out.out, stderr)


@contextlib.contextmanager
def stand_in_dictionaries(hub, registry):
    """The small offline Qwen3-1.7B-Base's CLT (``bluelight-qwen3-1.7b``) and a tied test SAE
    release on its 3 layers, the release registered while the block is open; yields it."""
    import qwen_interp
    from qwen_interp.apps.testing.sae_hub import SAEReleasePlugin, qwen_scope_snapshot, tiny_release
    spec = registry.model("Qwen/Qwen3-1.7B-Base")
    release = tiny_release(spec, tied=True)
    qwen_scope_snapshot(hub, release, range(3), tied=True)
    hub.transcoder(registry.transcoder_release("bluelight-qwen3-1.7b"), spec)
    plugin = SAEReleasePlugin([release])
    qwen_interp.register_plugin(plugin)
    try:
        yield release
    finally:
        qwen_interp.unregister_plugin(plugin)
