"""Tests of profile qwen35 (a package, so its conftest does not shadow tests/conftest.py)."""
