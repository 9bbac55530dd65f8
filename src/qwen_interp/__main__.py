"""``python -m qwen_interp``: the ``qwen-interp`` command line.

Run as a script, never imported by the core, so the core still imports no app.
"""

import sys

from qwen_interp.apps.cli import main

sys.exit(main())
