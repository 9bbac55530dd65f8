"""Test support: an offline Hugging Face cache of small checkpoints under their real repo ids,
built from each model family's stand-in recipe (:mod:`.hub`); loading a plugin from its one file
(:mod:`.plugin_file`); checking a family's hook names against the models (:mod:`.hook_check`).

Used by this project's tests, by the ``qwen-interp trace`` demo, and by downstream users through
the pytest plugin (``qwen_offline_hub`` fixture).
"""

from .hub import OfflineHub, qwen_tokenizer_dir, small_config

__all__ = ["OfflineHub", "qwen_tokenizer_dir", "small_config"]
