"""The apps layer: what users run, built on the core and the plugins' public APIs.

- :mod:`qwen_interp.apps.session`: one model in memory for TransformerLens, circuit-tracer and
  SAELens, one forward pass.
- :mod:`qwen_interp.apps.trace`: the main job (``qwen-interp trace``).
- :mod:`qwen_interp.apps.cli`: the ``qwen-interp`` command line.
- :mod:`qwen_interp.apps.upstream`: render and check the plugins' upstream patches.
- :mod:`qwen_interp.apps.testing`: an offline Hugging Face cache of small stand-ins.

Apps may import the core (``qwen_interp``) and any plugin's public API; the core and the plugins
never import an app (``tests/test_layers.py``).
"""
