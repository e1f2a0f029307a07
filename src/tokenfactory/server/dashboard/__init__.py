"""A live, read-only dashboard at /dashboard: each tier's promise against what it delivers,
the engine's load, revenue, the tier mix and the capacity frontier, from the factory's own
metrics. Open on a loopback-only server; beyond loopback it needs the admin key."""

from tokenfactory.server.dashboard.access import DashboardAccess, is_loopback
from tokenfactory.server.dashboard.route import dashboard_router

__all__ = ["DashboardAccess", "dashboard_router", "is_loopback"]
