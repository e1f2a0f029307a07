"""The scheduling room runs without torch: its policies run unchanged in the engine, the
simulator and the planner."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_the_policies_and_the_simulator_import_no_torch():
    code = (
        "import sys\n"
        "from tokenfactory.scheduling.policy import known_policies, make_policy\n"
        "import tokenfactory.scheduling.simulator\n"
        "for name in known_policies():\n"
        "    make_policy(name)\n"
        "assert 'torch' not in sys.modules, 'scheduling imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
