"""Built-in plugin: Qwen-Scope SAEs in SAELens."""

from __future__ import annotations
