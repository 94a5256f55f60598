"""The pipeline's progress lines on stderr (``quiet`` silences them)."""

from __future__ import annotations

import sys

__all__ = ["log"]


def log(quiet: bool, text: str) -> None:
    """Write ``text`` as one line on stderr unless ``quiet``."""
    if not quiet:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
