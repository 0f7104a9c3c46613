"""Whether anyone watches the terminal: the one rule for progress bars and progress output.

Quiet (no bars, no torch-fidelity chatter) when DDBENCH_QUIET=1 (the tests set it) or when
stderr is not a terminal (Snakemake and DVC send it to a log file, where a bar is noise).
"""
from __future__ import annotations

import os
import sys


def quiet() -> bool:
    """True when progress bars should stay off: DDBENCH_QUIET=1 or stderr is not a terminal."""
    return os.environ.get("DDBENCH_QUIET") == "1" or not sys.stderr.isatty()


def log_lines() -> bool:
    """True when a long stage should print plain progress lines instead: a log file, not the tests."""
    return quiet() and os.environ.get("DDBENCH_QUIET") != "1"
