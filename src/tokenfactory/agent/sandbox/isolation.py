"""Cutting a command off the network, with a mechanism that really exists on this machine.

On Linux an unprivileged user may usually create a user namespace and, inside it, a network
namespace holding only a loopback device that is down: `unshare --net --map-root-user`. When
the kernel or the container forbids that, commands are refused rather than run with network.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class NetworkIsolation:
    """The argv prefix that runs a program without network, or why there is none."""

    prefix: tuple[str, ...]
    unavailable_reason: str | None = None

    @property
    def available(self) -> bool:
        return self.unavailable_reason is None

    @classmethod
    def probe(cls) -> NetworkIsolation:
        """Try `unshare --net --map-root-user true` once and keep what works."""
        unshare = shutil.which("unshare")
        if unshare is None:
            return cls((), "no `unshare` program here to cut commands off the network")
        prefix = (unshare, "--net", "--map-root-user", "--")
        try:
            done = subprocess.run(
                [*prefix, "true"], capture_output=True, timeout=10, env={"PATH": "/usr/bin:/bin"}
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return cls((), f"`unshare --net` failed to start: {exc}")
        if done.returncode != 0:
            why = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            return cls((), f"this kernel refuses a private network namespace ({why})")
        return cls(prefix)

    @classmethod
    def unavailable(cls, reason: str) -> NetworkIsolation:
        return cls((), reason)
