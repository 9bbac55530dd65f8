"""Test support: an offline Hugging Face cache of small Qwen checkpoints under their real repo ids.

Used by this project's tests, by the ``qwen-interp trace`` demo, and by downstream users through
the pytest plugin (``qwen_offline_hub`` fixture). See :mod:`qwen_interp.apps.testing.hub`.
"""

from .hub import OfflineHub, qwen_tokenizer_dir, small_config

__all__ = ["OfflineHub", "qwen_tokenizer_dir", "small_config"]
