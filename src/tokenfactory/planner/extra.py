"""The planner ships as an extra (`tokenfactory[plan]`): the solver and the plots."""

from __future__ import annotations

import importlib.util

INSTALL = "pip install 'tokenfactory[plan]'"
PLAN_MODULES = ("scipy", "matplotlib")


def missing_plan_modules() -> list[str]:
    return [m for m in PLAN_MODULES if importlib.util.find_spec(m) is None]
