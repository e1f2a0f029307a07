"""A screenshot of the dashboard under load, for the docs (docs/images/dashboard.png).

Starts `tokenfactory serve` on the embedded model with the shipped tiers (or their prices with
the promises --promises gives; this machine's probe decides which open), loads it with
`tokenfactory bench serve` spread over the open tiers, and photographs /dashboard in headless
Chromium once the page has seen the load for a while.
The PNG is kept under --max-kb (palette-reduced with Pillow when it is larger).

    .venv/bin/python tools/dashboard_screenshot.py [--out docs/images/dashboard.png] \
        [--promises free=0.5:60,standard=1:30,high=1.5:20,ultra=2:10,super=50:1]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tokenfactory.bench.local_factory import LocalFactory, open_tiers_toml


def tiers_with_promises(spec: str) -> str:
    """The shipped tiers and prices with the cpu promises `spec` names."""
    promises = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        speed, _, ttft = value.partition(":")
        promises[name.strip()] = (float(speed), float(ttft))
    lines = []
    for line in open_tiers_toml().splitlines():
        name = line.split(" = {")[0]
        if " = { tokens_per_s" in line and name in promises:
            speed, ttft = promises.pop(name)
            line = f"{name} = {{ tokens_per_s = {speed}, ttft_s = {ttft} }}"
        lines.append(line)
    if promises:
        sys.exit(f"no such tier: {', '.join(promises)}")
    return "\n".join(lines) + "\n"


def open_tiers(base: str) -> list[str]:
    return [t["name"] for t in httpx.get(base + "/v1/tiers").json()["data"] if t["available"]]


def start_load(factory: LocalFactory, tiers: list[str], prompts: int) -> subprocess.Popen:
    share = 1 / len(tiers)
    mix = ",".join(f"{t}={share:.3f}" for t in tiers)
    cmd = [
        str(Path(sys.executable).with_name("tokenfactory")), "bench", "serve",
        "--base-url", factory.base, "--tier-keys", str(factory.keys_path),
        "--num-prompts", str(prompts), "--max-concurrency", "6", "--request-rate", "1",
        "--input-len", "64", "--output-len", "16..32", "--tier-mix", mix,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def shrink(png: bytes, max_kb: int) -> bytes:
    if len(png) <= max_kb * 1024:
        return png
    from PIL import Image  # only when the plain PNG is too large

    img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images/dashboard.png"))
    ap.add_argument("--load-s", type=float, default=90, help="seconds of load before the shot")
    ap.add_argument("--prompts", type=int, default=200, help="requests the load may send")
    ap.add_argument(
        "--promises",
        help="the shipped tiers and prices with these cpu promises instead, e.g. "
        "free=0.5:60,standard=1:30 (tokens/s per user : TTFT s; unnamed tiers keep 0.01:3600)",
    )
    ap.add_argument("--max-kb", type=int, default=150)
    ap.add_argument("--chromium", default=os.environ.get("TOKENFACTORY_CHROMIUM"))
    args = ap.parse_args()
    chromium = args.chromium or shutil.which("chromium")
    if chromium is None:
        sys.exit("no Chromium: apt-get install chromium, or pass --chromium PATH")
    serve_args = ["--probe-batches", "1,2,4,8", "--max-num-seqs", "8", "--tier-preset", "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.promises:
            tiers = Path(tmp) / "tiers.toml"
            tiers.write_text(tiers_with_promises(args.promises))
            serve_args += ["--tiers", str(tiers)]
        png = photograph(serve_args, chromium, args.load_s, args.prompts)
    png = shrink(png, args.max_kb)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) / 1024:.0f} KB)")


def photograph(serve_args: list[str], chromium: str, load_s: float, prompts: int) -> bytes:
    from playwright.sync_api import sync_playwright

    factory = LocalFactory(serve_args)
    load = None
    try:
        tiers = open_tiers(factory.base)
        print(f"open tiers: {', '.join(tiers)}; loading for {load_s:g} s")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(factory.base + "/dashboard")
            load = start_load(factory, tiers, prompts)
            time.sleep(load_s)
            png = page.screenshot(full_page=True)
            browser.close()
    finally:
        if load is not None and load.poll() is None:
            load.send_signal(signal.SIGINT)
            try:
                load.wait(30)
            except subprocess.TimeoutExpired:
                load.kill()
        factory.close()
    return png


if __name__ == "__main__":
    main()
