"""/dashboard in process: who may see it (open on loopback, the admin key beyond it), the
page and its files, and the state's shape against the factory's tiers and probe. A real
factory on a tiny random-weight engine; no model file, no requests."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from tests.server.test_dashboard_state import tiny_factory
from tokenfactory.server.app import create_app
from tokenfactory.server.dashboard import DashboardAccess, is_loopback
from tokenfactory.server.dashboard.access import COOKIE
from tokenfactory.server.factory import Factory

ADMIN_KEY = "admin-0123456789abcdef"


@pytest.fixture(scope="module")
def factory(tmp_path_factory):
    f = tiny_factory(tmp_path_factory.mktemp("dashboard"))
    yield f
    asyncio.run(f.shutdown())


@contextlib.asynccontextmanager
async def _client(factory: Factory, host: str, admin_key: str | None = None):
    app = create_app(factory, DashboardAccess(host, admin_key))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://factory") as c:
        yield c


def _get(factory, host, path, admin_key=None, **kw) -> httpx.Response:
    async def main():
        async with _client(factory, host, admin_key) as c:
            return await c.get(path, **kw)

    return asyncio.run(main())


def _openai_error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code
    return err["message"]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("factory.example", False),
    ],
)
def test_loopback_hosts_are_told_apart_from_the_rest(host, loopback):
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "path", ["/dashboard", "/dashboard/state", "/dashboard/static/dashboard.js"]
)
def test_on_loopback_the_dashboard_is_open(factory, path):
    r = _get(factory, "127.0.0.1", path)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "path", ["/dashboard", "/dashboard/state", "/dashboard/static/dashboard.js"]
)
def test_beyond_loopback_without_an_admin_key_it_is_off_and_says_how_to_turn_it_on(factory, path):
    message = _openai_error(_get(factory, "0.0.0.0", path), 403, "dashboard_disabled")
    assert "--admin-key" in message and "TOKENFACTORY_ADMIN_KEY" in message


def test_beyond_loopback_the_admin_key_opens_it_and_nothing_else_does(factory):
    def get(path: str = "/dashboard/state", **kw) -> httpx.Response:
        return _get(factory, "0.0.0.0", path, ADMIN_KEY, **kw)

    _openai_error(get(), 401, "invalid_admin_key")
    _openai_error(get(headers={"X-Admin-Key": ADMIN_KEY[:-1]}), 401, "invalid_admin_key")
    _openai_error(get(headers={"Authorization": "Bearer wrong"}), 401, "invalid_admin_key")
    not_the_cookie = {"Cookie": f"{COOKIE}={ADMIN_KEY}"}  # the key itself is not the cookie
    _openai_error(get(headers=not_the_cookie), 401, "invalid_admin_key")
    _openai_error(get("/dashboard?key=wrong"), 401, "invalid_admin_key")
    _openai_error(get("/dashboard/static/dashboard.css"), 401, "invalid_admin_key")
    assert get(headers={"X-Admin-Key": ADMIN_KEY}).status_code == 200
    assert get(headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200


def test_a_browser_brings_the_key_once_and_keeps_a_cookie_that_is_not_the_key(factory):
    async def main():
        async with _client(factory, "0.0.0.0", ADMIN_KEY) as c:
            first = await c.get(f"/dashboard?key={ADMIN_KEY}")
            page = await c.get("/dashboard")  # the cookie, as a browser would send it
            state = await c.get("/dashboard/state")
            script = await c.get("/dashboard/static/dashboard.js")
            return first, page, state, script

    first, page, state, script = asyncio.run(main())
    assert first.status_code == 303 and first.headers["location"] == "/dashboard"
    cookie = first.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert ADMIN_KEY not in cookie
    assert page.status_code == 200 and "dashboard.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert state.status_code == 200 and state.json()["object"] == "dashboard.state"
    assert script.status_code == 200 and script.headers["content-type"].startswith(
        "text/javascript"
    )


def test_only_the_dashboards_own_files_are_served(factory):
    _openai_error(_get(factory, "127.0.0.1", "/dashboard/static/route.py"), 404, "not_found")
    r = _get(factory, "127.0.0.1", "/dashboard/static/..%2Froute.py")
    assert r.status_code == 404


def test_the_state_lists_every_tier_with_its_promise_and_marks_the_closed_ones(factory):
    state = _get(factory, "127.0.0.1", "/dashboard/state").json()
    tiers = {t["name"]: t for t in state["tiers"]}
    assert list(tiers) == factory.catalog.names
    assert {n for n, t in tiers.items() if t["open"]} == {"free", "standard", "high"}
    assert "15 tokens/s" in tiers["ultra"]["reason"] and tiers["free"]["reason"] is None
    assert tiers["high"]["promise"] == {"tokens_per_s": 8.0, "ttft_s": 3.0}
    for t in tiers.values():  # nothing served yet: nothing to judge, not a zero
        assert t["recent"]["attainment"] is None and t["recent"]["ttft_p50_s"] is None
        assert t["totals"]["requests"] == 0
    assert state["engine"] == {"healthy": True, "running": 0, "waiting": 0, "kv_cache_usage": 0.0}
    assert state["recent"]["attainment"] is None and state["totals"]["revenue_micro_usd"] == 0


def test_the_frontier_is_the_probes_points_with_the_operating_point_beside_them(factory):
    frontier = _get(factory, "127.0.0.1", "/dashboard/state").json()["frontier"]
    assert [
        (p["batch"], p["tokens_per_s_per_user"], p["tokens_per_s"]) for p in frontier["points"]
    ] == [
        (1, 10.0, 10.0),
        (4, 6.25, 25.0),
    ]
    assert frontier["machine"] == "test machine"
    op = frontier["operating_point"]
    assert op["tokens_per_s_per_user"] is None and op["running"] == 0


def test_serve_takes_the_admin_key_from_its_option_or_the_environment(monkeypatch):
    from typer.testing import CliRunner

    from tokenfactory.cli import app
    from tokenfactory.server import run

    seen: list[run.ServeOptions] = []
    monkeypatch.setattr(run, "serve", seen.append)
    monkeypatch.delenv("TOKENFACTORY_ADMIN_KEY", raising=False)
    assert CliRunner().invoke(app, ["serve"]).exit_code == 0
    assert CliRunner().invoke(app, ["serve", "--admin-key", "k1"]).exit_code == 0
    monkeypatch.setenv("TOKENFACTORY_ADMIN_KEY", "k2")
    assert CliRunner().invoke(app, ["serve"]).exit_code == 0
    assert [o.admin_key for o in seen] == [None, "k1", "k2"]


def test_a_ledger_route_answers_503_while_the_ledger_database_is_unreachable(factory, monkeypatch):
    # /v1/usage reads the ledger: with its database gone it is a 503 with Retry-After in the
    # OpenAI shape, as admission is, never a 500.
    from tokenfactory.billing.errors import LedgerUnavailableError

    _, raw = factory.billing.create_key("usage-outage", "standard")

    def unreachable(**_):
        raise LedgerUnavailableError(retry_after_s=2.0)

    monkeypatch.setattr(factory.billing, "usage", unreachable)
    r = _get(factory, "127.0.0.1", "/v1/usage", headers={"Authorization": f"Bearer {raw}"})
    _openai_error(r, 503, "ledger_unavailable")
    assert r.headers["retry-after"] == "2"
