"""Who may see the dashboard: anyone on a loopback-only server; beyond loopback, only a
holder of the admin key (and nobody when no admin key is set).

A browser brings the key once as `/dashboard?key=...`; the server answers with a cookie that
holds a keyed hash of the admin key (never the key itself), HttpOnly and SameSite=Strict, and
sends the browser on to `/dashboard` so the key leaves the address bar. Scripts send the key as
`X-Admin-Key` or `Authorization: Bearer`. Every comparison takes constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from starlette.requests import Request

from tokenfactory.server.errors import APIError

COOKIE = "tokenfactory_dashboard"
HEADER = "X-Admin-Key"
ENV_VAR = "TOKENFACTORY_ADMIN_KEY"


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve beyond this machine
        return False


@dataclass(frozen=True)
class DashboardAccess:
    host: str = "127.0.0.1"  # where the server listens
    admin_key: str | None = None

    @property
    def open(self) -> bool:
        return is_loopback(self.host)

    def cookie_value(self) -> str:
        assert self.admin_key is not None
        mac = hmac.new(self.admin_key.encode(), b"tokenfactory dashboard", hashlib.sha256)
        return mac.hexdigest()

    def key_matches(self, candidate: str | None) -> bool:
        if self.admin_key is None or not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.admin_key.encode())

    def check(self, request: Request) -> None:
        """Raise the OpenAI-shaped error that says why this request may not see the
        dashboard; return when it may."""
        if self.open:
            return
        if self.admin_key is None:
            raise APIError(
                403,
                f"The dashboard is off: this server listens on {self.host}, beyond loopback, and "
                f"has no admin key. Start it with --admin-key KEY (or set {ENV_VAR}), then open "
                "/dashboard?key=KEY.",
                "invalid_request_error",
                "dashboard_disabled",
            )
        if self._presented(request):
            return
        raise APIError(
            401,
            "The dashboard needs the admin key: open /dashboard?key=KEY in a browser, or send "
            f"it as '{HEADER}: KEY'.",
            "invalid_request_error",
            "invalid_admin_key",
        )

    def _presented(self, request: Request) -> bool:
        header = request.headers.get(HEADER)
        if header is not None:
            return self.key_matches(header)
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return self.key_matches(value.strip())
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(
            cookie.encode(), self.cookie_value().encode()
        )
