"""The dashboard's routes: the page and its three static files under /dashboard, and the JSON
snapshot at /dashboard/state that the page polls."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from tokenfactory.server.dashboard.access import COOKIE, DashboardAccess
from tokenfactory.server.dashboard.readings import ReadingWindow
from tokenfactory.server.dashboard.state import dashboard_state
from tokenfactory.server.errors import APIError
from tokenfactory.server.factory import Factory

STATIC_FILES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# The page loads only its own files and asks only its own server; no frame may embed it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
WINDOW_S = 30.0


def _static(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def dashboard_router(factory: Factory, access: DashboardAccess) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    window = ReadingWindow(factory.metrics.registry, WINDOW_S, refresh=factory.refresh_gauges)

    @router.get("/dashboard", response_model=None)
    async def page(request: Request, key: str | None = None) -> Response:
        if key is not None and not access.open:
            if not access.key_matches(key):
                access.check(request)  # says why: no admin key set, or a wrong one
                raise APIError(
                    401, "Incorrect admin key.", "invalid_request_error", "invalid_admin_key"
                )
            # Remember the browser by cookie and take the key out of its address bar.
            done = RedirectResponse(request.url.remove_query_params("key").path, status_code=303)
            done.set_cookie(
                COOKIE,
                access.cookie_value(),
                path="/dashboard",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return done
        access.check(request)
        return Response(
            _static("index.html"), media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS
        )

    @router.get("/dashboard/static/{name}")
    async def static(name: str, request: Request) -> Response:
        access.check(request)
        if name not in STATIC_FILES:
            raise APIError(
                404, f"No dashboard file {name!r}.", "invalid_request_error", "not_found"
            )
        return Response(_static(name), media_type=STATIC_FILES[name], headers=SECURITY_HEADERS)

    @router.get("/dashboard/state")
    async def state(request: Request) -> Response:
        access.check(request)
        body = dashboard_state(factory, window.change())
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return router
