"""How the CLI reports besides progress: its exit codes, one-line errors and plain tables (on stdout)."""

from __future__ import annotations

import sys
from typing import Any, Sequence

EXIT_OK = 0
EXIT_FAILED = 1
"""Some of the work failed (an import with bad files, a followed run that failed)."""
EXIT_USAGE = 2
"""Bad input: the command did nothing, and said why in one line."""
EXIT_INTERRUPTED = 130
"""Stopped by a signal or Ctrl-C, or a followed run that was cancelled."""


def usage_error(error: BaseException) -> int:
    """Print ``error`` as one line on stderr; returns :data:`EXIT_USAGE`."""
    print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
    return EXIT_USAGE


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows under a header in left-aligned columns."""
    widths = [max(len(str(value)) for value in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        print("  ".join(str(value).ljust(width) for value, width in zip(row, widths)).rstrip())
