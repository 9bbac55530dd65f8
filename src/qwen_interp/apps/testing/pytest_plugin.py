"""The pytest plugin is :mod:`qwen_interp_pytest` (the ``pytest11`` entry point): it lives outside
this package because importing ``qwen_interp`` arms every adapter, and the plugin is registered in
every pytest session of an environment that has qwen-interp installed. This name still works for
``-p qwen_interp.apps.testing.pytest_plugin`` (with ``-p no:qwen_interp``, not both)."""

from qwen_interp_pytest import *  # noqa: F401,F403
