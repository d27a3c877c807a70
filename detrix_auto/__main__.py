"""``python -m detrix_auto``: the same command as ``detrix-auto``."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m detrix_auto"))
