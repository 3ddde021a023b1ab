"""Figures written for people, the same in the app and the CLI."""

from __future__ import annotations


def format_bytes(count: int) -> str:
    """A size in SI units, as disks and file managers count: ``512 B``, ``3.4 MB``, ``1.2 GB``."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"
