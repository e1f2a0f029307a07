"""`tokenfactory serve` in a child process on a free loopback port, for benchmarks.

Benchmarks that compare something through HTTP (the server against the engine, policies
against each other) start the factory the way a user does and talk to it only over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def open_tiers_toml() -> str:
    """The shipped tiers and prices with promises any machine keeps: for measuring (or
    testing) something other than which tiers this machine can open."""
    from tokenfactory.tiers import load_tiers

    catalog = load_tiers()
    lines = [f'default_tier = "{catalog.default_tier}"']
    for t in catalog.tiers:
        price = t.as_dict()["price_usd_per_mtok"]
        lines += [
            f"[tiers.{t.name}]",
            f'input_usd_per_mtok = "{price["input"]}"',
            f'cached_input_usd_per_mtok = "{price["cached_input"]}"',
            f'output_usd_per_mtok = "{price["output"]}"',
            f"sheddable = {'true' if t.sheddable else 'false'}",
        ]
    lines.append("[presets.cpu]")
    lines += [f"{t.name} = {{ tokens_per_s = 0.01, ttft_s = 3600 }}" for t in catalog.tiers]
    return "\n".join(lines) + "\n"


def copy_probe(src: str | Path, dst: str | Path) -> None:
    """Copy a data directory's cached hardware probe (`capacity-*.json`) into another."""
    for f in Path(src).glob("capacity-*.json"):
        shutil.copy(f, Path(dst) / f.name)


class LocalFactory:
    """Start `tokenfactory serve ARGS` in a fresh data directory and wait until it is ready."""

    def __init__(
        self,
        args: list[str],
        open_tiers: bool = False,
        ready_timeout_s: float = 600,
        probe_dir: str | Path | None = None,
    ):
        self._tmp = tempfile.TemporaryDirectory()
        self.data_dir = Path(self._tmp.name)
        if probe_dir is not None:
            # Reuse a hardware probe already taken (same machine and model), so that factories
            # compared side by side open the same tiers, not each its own probe's noise.
            copy_probe(probe_dir, self.data_dir)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        if open_tiers:
            tiers = self.data_dir / "tiers.toml"
            tiers.write_text(open_tiers_toml())
            args = ["--tiers", str(tiers), *args]
        exe = str(Path(sys.executable).with_name("tokenfactory"))
        cmd = [exe, "serve", "--port", str(port), "--data-dir", str(self.data_dir), *args]
        self.log_path = self.data_dir / "serve.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace")
                self.close()
                raise RuntimeError(f"the factory did not start:\n{log}")
            try:
                if httpx.get(self.base + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "local-keys.json"

    def key(self, tier: str) -> str:
        return json.loads(self.keys_path.read_text())[tier]

    def model(self) -> str:
        r = httpx.get(self.base + "/v1/models",
                      headers={"Authorization": f"Bearer {self.key('free')}"})
        return r.json()["data"][0]["id"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self._tmp.cleanup()
