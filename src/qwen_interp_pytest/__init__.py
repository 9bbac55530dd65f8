"""pytest plugin (``pytest11`` entry point): an offline Hugging Face cache for tests.

Installing qwen-interp registers this plugin in every pytest session of the environment, so it
lives outside the ``qwen_interp`` package (importing that arms every adapter) and imports nothing
of qwen-interp until a session or a test opts in:

- ``qwen_offline_hub = true`` in the ini file, or ``--qwen-offline-hub``: before any test module
  imports ``huggingface_hub``/``transformers``, ``HF_HOME`` points at a private cache
  (``QWEN_INTERP_TEST_HF_HOME`` to reuse one across runs) and ``HF_HUB_OFFLINE=1``: nothing can
  reach the Hub; then ``qwen_interp`` is imported, so its adapters are armed for every test;
- a test that requests ``qwen_registry`` (or ``qwen_offline_hub``, which needs the above).

Fixtures build small checkpoints under the real repo ids on demand::

    def test_load(qwen_offline_hub, qwen_registry):
        spec = qwen_registry.model("Qwen/Qwen3-1.7B-Base")
        qwen_offline_hub.model(spec)
        HookedTransformer.from_pretrained("Qwen/Qwen3-1.7B-Base")   # from the offline cache
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

# Declared in qwen_interp.settings (TEST_HF_HOME) but read here directly: importing that module
# imports qwen_interp, which must wait until the offline environment below is in place.
ENV_HF_HOME = "QWEN_INTERP_TEST_HF_HOME"
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1", "HF_DATASETS_OFFLINE": "1"}
# Variables that would send HF libraries to another cache than HF_HOME.
_OVERRIDING_ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE",
                   "HF_HUB_ETAG_TIMEOUT")


def pytest_addoption(parser):
    parser.addini("qwen_offline_hub", type="bool", default=False,
                  help="qwen-interp: run tests against a private offline HF cache")
    parser.addoption("--qwen-offline-hub", action="store_true", default=False,
                     help="qwen-interp: run tests against a private offline HF cache")


def _enabled(config) -> bool:
    return bool(config.getoption("--qwen-offline-hub") or config.getini("qwen_offline_hub"))


def pytest_configure(config):
    if not _enabled(config):
        return
    if "huggingface_hub" in sys.modules:
        raise pytest.UsageError(
            "qwen-interp offline hub: huggingface_hub was imported before pytest configured the "
            "offline cache (its paths are fixed at import). Import it inside tests or fixtures.")
    saved = {k: os.environ.get(k) for k in (*_OFFLINE_ENV, *_OVERRIDING_ENV, "HF_HOME")}
    hf_home = os.environ.get(ENV_HF_HOME)
    owned = hf_home is None
    if owned:
        hf_home = tempfile.mkdtemp(prefix="qwen-interp-hf-")
    for key in _OVERRIDING_ENV:
        os.environ.pop(key, None)
    os.environ.update(_OFFLINE_ENV, HF_HOME=hf_home)
    config._qwen_offline_hub = (hf_home, owned, saved)
    import qwen_interp  # noqa: F401  - opted in: the adapters are armed for the whole session


def pytest_unconfigure(config):
    state = getattr(config, "_qwen_offline_hub", None)
    if state is None:
        return
    hf_home, owned, saved = state
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if owned:
        shutil.rmtree(hf_home, ignore_errors=True)


@pytest.fixture(scope="session")
def qwen_offline_hub(pytestconfig):
    """An :class:`~qwen_interp.apps.testing.OfflineHub` on the session's offline ``HF_HOME``."""
    state = getattr(pytestconfig, "_qwen_offline_hub", None)
    if state is None:
        pytest.fail("qwen_offline_hub needs `qwen_offline_hub = true` in the pytest ini "
                    "or --qwen-offline-hub", pytrace=False)
    from qwen_interp.apps.testing.hub import OfflineHub
    return OfflineHub(state[0])


@pytest.fixture(scope="session")
def qwen_registry():
    """The registry of every installed qwen-interp plugin."""
    import qwen_interp
    return qwen_interp.registry()


@pytest.fixture(scope="session")
def qwen_demo_cache(tmp_path_factory):
    """A qwen-interp cache folder (for ``QWEN_INTERP_CACHE``) holding the built-in demo, trained
    once per test run (``qwen_interp.apps.demo``, about 40 s on 2 CPUs) and shared by every
    test and every xdist worker of the run (its build is locked: one builds, the others wait).
    Commands given ``QWEN_INTERP_CACHE`` = this folder skip the first-use build."""
    from qwen_interp.apps.demo.build import build_trained_demo
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, shared by its workers
    cache = base / "qwen-demo-cache"
    build_trained_demo(cache / "demo-hf", echo=lambda *args, **kwargs: None)
    return cache
