"""The dashboard in a real browser (headless Chromium) against a real `tokenfactory serve`
listening beyond loopback with an admin key: the key opens it, every tier is shown (the
closed one marked), and the numbers move when streaming requests run.

Skips when Playwright or Chromium is missing, except under CI=true, where it fails (.ci/run
installs Chromium with .ci/chromium.sh)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.server.conftest import MODEL, ServerProcess, start_server
from tokenfactory.bench.local_factory import open_tiers_toml

pytestmark = pytest.mark.e2e

ADMIN_KEY = "dashboard-test-key-7f3a9c"
CLOSED = "super"  # promised faster than any machine: closed at start
PAGE_WAIT_S = 120  # the page polls every 1.5 s; the server shares a busy machine


@pytest.fixture(scope="module")
def chromium() -> str:
    """Chromium and Playwright, or a skip that says which is missing (a failure in CI)."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install playwright)")
    named = os.environ.get("TOKENFACTORY_CHROMIUM")
    path = named or shutil.which("chromium")
    if named and not os.access(named, os.X_OK):
        missing.append(f"Chromium at TOKENFACTORY_CHROMIUM={named}, which is not a program")
    elif path is None:
        missing.append("Chromium (apt-get install chromium, or .ci/chromium.sh)")
    if missing:
        reason = "the dashboard's browser test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true, so this is a failure, not a skip")
        pytest.skip(reason)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def server(chromium, tmp_path_factory) -> ServerProcess:  # no browser: skip before the start
    data_dir = tmp_path_factory.mktemp("dashboard-browser")
    data_dir.mkdir(parents=True, exist_ok=True)
    tiers = data_dir / "tiers.toml"
    loose = open_tiers_toml()
    closed = f"{CLOSED} = {{ tokens_per_s = 0.01, ttft_s = 3600 }}"
    assert closed in loose
    tiers.write_text(loose.replace(closed, f"{CLOSED} = {{ tokens_per_s = 1e9, ttft_s = 3600 }}"))
    s = start_server(data_dir, "--tiers", str(tiers), "--host", "0.0.0.0", "--admin-key", ADMIN_KEY)
    yield s
    s.stop()


def _until(read: Callable[[], str], ok: Callable[[str], bool], what: str) -> str:
    deadline = time.monotonic() + PAGE_WAIT_S
    while True:
        value = read()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value!r}"
        time.sleep(0.25)


def _stream(server: ServerProcess, tier: str, done: list[int]) -> None:
    with httpx.stream(
        "POST",
        server.base_url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.keys[tier]}"},
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": f"Name a colour ({tier})."}],
            "max_tokens": 8,
            "stream": True,
        },
        timeout=300,
    ) as r:
        assert r.status_code == 200, r.read()
        for _ in r.iter_lines():
            pass
    done.append(1)


def test_the_dashboard_shows_every_tier_and_moves_under_load(chromium, server):
    from playwright.sync_api import sync_playwright

    tiers = httpx.get(server.base_url + "/v1/tiers").json()["data"]
    open_tiers = [t["name"] for t in tiers if t["available"]]
    assert CLOSED not in open_tiers and len(open_tiers) == 4

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # Beyond loopback: no key, no dashboard; the key once, then the cookie.
            refused = page.goto(server.base_url + "/dashboard")
            assert refused is not None and refused.status == 401
            page.goto(f"{server.base_url}/dashboard?key={ADMIN_KEY}")
            assert page.url == server.base_url + "/dashboard"  # the key left the address bar
            page.wait_for_selector("body[data-polls]", timeout=PAGE_WAIT_S * 1000)

            for t in tiers:
                row = page.locator(f'#tiers tr[data-tier="{t["name"]}"]')
                assert row.count() == 1, t["name"]
                assert row.get_attribute("data-open") == str(t["available"]).lower()
                status = row.locator("td.status").inner_text()
                assert status == ("open" if t["available"] else "closed")
            assert page.locator("#frontier circle").count() >= 2  # the probe's points

            total = page.locator("#requests-total")
            before = int(total.inner_text().replace(",", ""))
            done: list[int] = []
            load = [
                threading.Thread(target=_stream, args=(server, tier, done))
                for tier in open_tiers * 2
            ]
            for thread in load:
                thread.start()
            for thread in load:
                thread.join(300)
            assert len(done) == len(load)

            _until(
                lambda: total.inner_text().replace(",", ""),
                lambda v: int(v) >= before + len(load),
                "requests on the page",
            )
            for name in open_tiers:
                cell = page.locator(f'#tiers tr[data-tier="{name}"] td[data-field="requests"]')
                _until(cell.inner_text, lambda v: int(v) >= 2, f"{name}'s requests")
            _until(
                page.locator("#tokens-per-s").inner_text,
                lambda v: v not in ("-", "0.0"),
                "tokens/s delivered",
            )
            assert page.locator("#operating-point").count() == 1
            assert page.locator('#tiers tr[data-tier="super"] td.status').inner_text() == "closed"
            shot = os.environ.get("TOKENFACTORY_DASHBOARD_SCREENSHOT")
            if shot:  # a picture of the page after the load, for whoever asked
                page.screenshot(path=shot, full_page=True)
            assert not errors, errors
        finally:
            browser.close()
