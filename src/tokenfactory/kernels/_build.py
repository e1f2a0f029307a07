"""Build the native kernels' library with ``torch.utils.cpp_extension`` at first use, cached.

One shared library holds every kernel (``ops.cpp`` registers them as ``torch.ops.tokenfactory``
operators; the kernel files include no torch headers). It is built on the machine that runs
it, at first use, because its flags follow that machine's CPU (AMX only where the CPU has it).

The library lands in ``<cache>/<hash of sources, flags, compiler and torch>/tokenfactory_cpu.so``.
Processes starting together build it once (an flock, which dies with its holder, so a killed
build leaves no stale lock); the build runs in a directory of its own and is renamed into
place, so no process ever loads a half-written file. A warm start hashes the sources and loads
the file (about 6 ms).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DISABLE_ENV = "TOKENFACTORY_NO_NATIVE"
CACHE_ENV = "TOKENFACTORY_KERNEL_CACHE"
LIB_NAME = "tokenfactory_cpu"
# How long a process waits for another one building the same library before building too.
WAIT_FOR_OTHER_BUILD_S = 300.0

_DIR = Path(__file__).parent
SOURCES = [
    _DIR / name for name in ("ops.cpp", "skinny_linear.cpp", "paged_attention.cpp", "fused_ops.cpp")
]
HEADERS = [_DIR / "kernels.h"]
# Kernel files choose their instruction sets with target pragmas; these apply to all files.
# -ffp-contract=off: products round where PyTorch's ops round them (add_rms_norm is compared
# bit for bit with them).
BASE_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]  # resolves to the libgomp torch already loaded (same soname)

# CPU flags (/proc/cpuinfo) each part needs.
BASE_CPU = frozenset({"avx2", "fma", "f16c", "bmi2", "movbe"})  # x86-64-v3: the library at all
AMX_CPU = frozenset({"amx_tile", "amx_bf16"})
BF16_CPU = frozenset({"avx512_bf16"})


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


def build_flags(cpu: frozenset[str], amx: bool) -> list[str]:
    """Compiler flags for this CPU: AMX tiles (if asked and present), AVX512-BF16 attention."""
    flags = list(BASE_FLAGS)
    if amx and AMX_CPU <= cpu:
        flags.append("-DTF_WITH_AMX")
    if BF16_CPU <= cpu:
        flags.append("-DTF_PAGED_BF16")
    return flags


def _compiler_id() -> str:
    # cpp_extension compiles with $CXX (default c++); an upgrade rebuilds instead of reusing.
    cxx = os.environ.get("CXX", "c++")
    try:
        res = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return res.stdout.splitlines()[0] if res.stdout else cxx
    except (OSError, subprocess.SubprocessError):
        return cxx


def cache_key(flags: list[str]) -> str:
    import torch

    h = hashlib.sha256()
    for path in [*SOURCES, *HEADERS]:
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(" ".join(flags).encode() + b"\0" + _compiler_id().encode())
    h.update(b"\0" + torch.__version__.encode())  # the library links against this torch
    return h.hexdigest()[:20]


def _ensure_ninja() -> None:
    # cpp_extension runs `ninja` from PATH; the pip package keeps it next to the venv's python,
    # which is not on PATH when the venv is not activated.
    if shutil.which("ninja"):
        return
    try:
        import ninja  # type: ignore[import-untyped]

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
    except ImportError:
        pass


def load_library(flags: list[str]) -> Path:
    """Load the library built with these flags into this process (registering its operators),
    building it first if the cache lacks it; returns the cached path.

    Raises (with the compiler output) on failure. Call at most once per process: a second
    library registering the same operators would be refused.
    """
    import torch

    lib = cache_root() / cache_key(flags) / f"{LIB_NAME}.so"
    if lib.exists():
        torch.ops.load_library(str(lib))
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(lib.parent / ".lock", WAIT_FOR_OTHER_BUILD_S) as held:
        if lib.exists():  # another process built it while this one waited
            torch.ops.load_library(str(lib))
            return lib
        if held:  # nobody else builds here now: what is left is from killed builds
            for old in lib.parent.glob(".build-*"):
                shutil.rmtree(old, ignore_errors=True)
        _build_and_load(flags, lib)
    return lib


@contextlib.contextmanager
def _build_lock(path: Path, timeout_s: float) -> Iterator[bool]:
    """Processes starting together build once: the others wait here, then load its result.

    flock, because the kernel drops it when its holder exits or is killed, so no lock goes
    stale; past ``timeout_s`` (a hung build) the waiter goes on without it (yields False) and
    builds on its own.
    """
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    held = False
                    break
                time.sleep(0.1)
        yield held  # closing the file releases the lock


def _build_and_load(flags: list[str], lib: Path) -> None:
    from torch.utils import cpp_extension  # imports setuptools: only on a cache miss

    _ensure_ninja()
    tmp = tempfile.mkdtemp(prefix=".build-", dir=lib.parent)
    try:
        cpp_extension.load(
            name=LIB_NAME,
            sources=[str(s) for s in SOURCES],
            extra_cflags=flags,
            extra_ldflags=LDFLAGS,
            extra_include_paths=[str(_DIR)],
            build_directory=tmp,
            is_python_module=False,  # loaded with torch.ops.load_library, no pybind11
        )
        built = Path(tmp) / f"{LIB_NAME}.so"
        if not built.exists():  # cpp_extension names a rebuild within one process name_v1
            built = next(Path(tmp).glob(f"{LIB_NAME}*.so"))
        os.chmod(built, 0o755)
        # Atomic: a concurrent loader sees no file or the whole one. This process keeps the
        # copy it loaded from the build directory (still mapped after the rename).
        os.replace(built, lib)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
