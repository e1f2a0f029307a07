"""Compile small C kernels with the system gcc at first use and cache the shared library.

The library lands in ``<cache>/<hash of source, flags and compiler>/<name>.so``; it is built
into a temporary file in that directory and renamed into place, so processes racing to build
the same kernel never load a half-written file. Nothing here raises: a failed build is logged
once and reported as ``None`` so callers fall back to PyTorch.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

DISABLE_ENV = "TOKENFACTORY_NO_NATIVE"
CACHE_ENV = "TOKENFACTORY_KERNEL_CACHE"
BUILD_TIMEOUT_S = 120.0


def native_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_root() -> Path:
    if env := os.environ.get(CACHE_ENV):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tokenfactory" / "kernels"


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (Linux only; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def find_compiler() -> str | None:
    return shutil.which("gcc")


def _compiler_id(cc: str) -> str:
    # The version is part of the cache key: a compiler upgrade rebuilds instead of reusing.
    try:
        res = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return res.stdout.splitlines()[0] if res.stdout else cc
    except (OSError, subprocess.SubprocessError):
        return cc


def build_library(name: str, source: Path, flags: list[str]) -> Path:
    """Return the path of the compiled library, building it if needed.

    Raises ``RuntimeError`` (with the compiler output) or ``OSError`` on failure.
    """
    cc = find_compiler()
    if cc is None:
        raise RuntimeError("gcc not found on PATH")
    src = source.read_bytes()
    key = hashlib.sha256(
        b"\0".join([src, " ".join(flags).encode(), _compiler_id(cc).encode()])
    ).hexdigest()[:20]
    out_dir = cache_root() / key
    lib = out_dir / f"{name}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so.tmp", dir=out_dir)
    os.close(fd)
    try:
        cmd = [cc, *flags, "-shared", "-fPIC", "-o", tmp, str(source)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr.strip()}")
        os.chmod(tmp, 0o755)  # mkstemp makes it 0600; others sharing the cache must load it
        os.replace(tmp, lib)  # atomic: a concurrent loader sees the old name or the full file
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"compiling {source.name} timed out") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def load_library(name: str, source: Path, flags: list[str]) -> ctypes.CDLL | None:
    """Build (or reuse) and load a kernel library; ``None`` with one warning on any failure."""
    try:
        return ctypes.CDLL(str(build_library(name, source, flags)))
    except Exception as e:  # any failure means "use the PyTorch path"
        log.warning("native kernel %s unavailable, using PyTorch instead: %s", name, e)
        return None


class Once:
    """Runs a kernel module's loader once per process, even when several threads make the
    first call together; `reset()` lets tests load again under other conditions."""

    def __init__(self, load: Callable[[], bool]):
        self._load = load
        self._lock = threading.Lock()
        self.result: bool | None = None

    def __call__(self) -> bool:
        if self.result is not None:
            return self.result
        with self._lock:
            if self.result is None:
                self.result = self._load()
            return self.result

    def reset(self) -> None:
        self.result = None
