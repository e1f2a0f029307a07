"""The benchmarks ship as an extra (`tokenfactory[bench]`): the server installs without them."""

from __future__ import annotations

import importlib.util

INSTALL = "pip install 'tokenfactory[bench]'"
# What the bench needs beyond the server's own dependencies: the plots of its reports.
BENCH_MODULES = ("matplotlib",)


def missing_bench_modules() -> list[str]:
    return [m for m in BENCH_MODULES if importlib.util.find_spec(m) is None]
