"""tests/qwen35 run in profile qwen35 (.ci/run-qwen35). The main profile's pytest should not
recurse into this folder (``norecursedirs``); if it does, nothing here is collected rather than
every module failing on a transformers without Qwen3.5 — `qwen-interp doctor` says why."""

from qwen_interp_qwen35 import qwen35_supported

if not qwen35_supported():
    collect_ignore_glob = ["test_*.py"]
