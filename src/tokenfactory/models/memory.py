"""Will the weights fit? A check made before dequantizing anything."""

from __future__ import annotations

import os
from pathlib import Path

from tokenfactory.models.errors import ModelTooLargeError

_MEMINFO = Path("/proc/meminfo")
_GIB = 1024**3


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo; elsewhere free physical pages; None if unknown."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def ensure_fits(needed_bytes: int, what: str, available: int | None = None) -> None:
    """Raise ModelTooLargeError when `needed_bytes` exceed the memory available now."""
    if available is None:
        available = available_memory_bytes()
    if available is not None and needed_bytes > available:
        raise ModelTooLargeError(
            f"{what} needs about {needed_bytes / _GIB:.1f} GiB of memory for its weights, "
            f"but only {available / _GIB:.1f} GiB is available"
        )
