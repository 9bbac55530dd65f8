"""Print a command block of the README, so that CI runs exactly what the README shows.

    python3 .ci/readme_commands.py main    # the main job (first block under "## Two commands")
    python3 .ci/readme_commands.py test    # the test command (its block that runs pytest)
    python3 .ci/readme_commands.py all     # every line of every bash block, one per line

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)


def bash_blocks(text: str) -> list[str]:
    """Each ```bash block, with backslash-continued lines joined."""
    return [block.replace("\\\n", " ").strip() for block in BLOCK.findall(text)]


def two_commands(text: str) -> dict[str, str]:
    section = text.split("\n## Two commands\n", 1)[1].split("\n## ", 1)[0]
    blocks = bash_blocks(section)
    # The main job is the section's first block; the test command is the block that runs pytest.
    return {"main": blocks[0], "test": next(b for b in blocks if "pytest" in b)}


def all_commands(text: str) -> list[str]:
    return [" ".join(line.split()) for block in bash_blocks(text) for line in block.splitlines()
            if line.strip()]


if __name__ == "__main__":
    text = README.read_text(encoding="utf-8")
    which = sys.argv[1] if len(sys.argv) > 1 else "main"
    print("\n".join(all_commands(text)) if which == "all" else two_commands(text)[which])
