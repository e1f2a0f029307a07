from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from tokenfactory.billing import Billing
from tokenfactory.billing.db import ReservationRow, utcnow

from .conftest import settle_simple


def _crash(billing: Billing) -> None:
    """Lose the front's memory without settling (what kill -9 leaves behind). The process
    lives on, so the next front knows it is gone only once its lease runs out: see `later`."""
    billing._stop.set()
    billing.engine.dispose()


def later(minutes: float = 5) -> Callable[[], datetime]:
    """A wall clock `minutes` ahead: the crashed front's heartbeat is older than its lease."""
    return lambda: utcnow() + timedelta(minutes=minutes)


def test_a_reservation_left_open_by_a_crash_is_billed_at_its_last_progress(catalog, data_dir):
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key, _ = b.create_key("k", "ultra", budget_micro_usd=1_000_000)
    done = b.admit(key, request_id="done", model="m", tier=catalog["ultra"], prompt_tokens=100,
                   max_completion_tokens=100)
    settle_simple(b, done, catalog["high"], prompt=100, completion=100)
    res = b.admit(key, request_id="lost", model="m", tier=catalog["ultra"], prompt_tokens=400,
                  max_completion_tokens=1000)
    b.record_progress(res, prompt_tokens=400, cached_tokens=100, completion_tokens=37,
                      tier_so_far="high")
    assert b.flush_progress() == 1
    b.record_progress(res, prompt_tokens=400, cached_tokens=100, completion_tokens=38,
                      tier_so_far="high")  # never written: lost with the crash
    _crash(b)

    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0, wall_clock=later())
    state = b.budget_state(key)
    assert state.reserved_micro_usd == res.reserved_micro_usd  # the hold survives the crash
    assert b.reconcile_open_reservations(catalog) == 1
    entry = b.get_entry("lost")
    high = catalog["high"]
    assert entry is not None and entry.status == "reconciled"
    assert entry.finish_reason == "interrupted"
    assert (entry.prompt_tokens, entry.cached_tokens, entry.completion_tokens) == (400, 100, 37)
    assert entry.tier_delivered == "high" and entry.tier_requested == "ultra"
    assert entry.amount_micro_usd == high.cost_micro_usd(400, 100, 37)
    state = b.budget_state(key)
    assert state.reserved_micro_usd == 0
    assert state.spent_micro_usd == b.get_entry("done").amount_micro_usd + entry.amount_micro_usd
    assert b.reconcile_open_reservations(catalog) == 0
    assert len(b.entries()) == 2
    b.close()
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    assert b.reconcile_open_reservations(catalog) == 0
    b.close()


def test_reconcile_leaves_this_processes_live_requests_alone(billing: Billing, catalog):
    key, _ = billing.create_key("k", "high")
    res = billing.admit(key, request_id="live", model="m", tier=catalog["high"],
                        prompt_tokens=10, max_completion_tokens=10)
    assert billing.reconcile_open_reservations(catalog) == 0
    assert settle_simple(billing, res, catalog["high"], prompt=10, completion=1).status == (
        "settled")


def test_progress_is_written_about_once_a_second_in_the_background(catalog, data_dir):
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0.05)
    key, _ = b.create_key("k", "high")
    res = b.admit(key, request_id="r", model="m", tier=catalog["high"], prompt_tokens=10,
                  max_completion_tokens=100)
    b.record_progress(res, prompt_tokens=10, cached_tokens=0, completion_tokens=7,
                      tier_so_far="high")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with b.engine.connect() as conn:
            row = conn.execute(ReservationRow.__table__.select()).first()
        if row.completion_tokens == 7:
            break
        time.sleep(0.02)
    assert row.completion_tokens == 7
    b.close()


CRASHING_SERVER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from tokenfactory.billing import Billing
    from tokenfactory.tiers import load_tiers

    catalog = load_tiers(None, "cpu")
    b = Billing.open(catalog, data_dir=Path(sys.argv[1]), progress_interval_s=0)
    key, _ = b.create_key("k", "high")
    res = b.admit(key, request_id="doomed", model="m", tier=catalog["high"],
                  prompt_tokens=50, max_completion_tokens=500)
    for n in range(1, 21):
        b.record_progress(res, prompt_tokens=50, cached_tokens=0, completion_tokens=n,
                          tier_so_far="standard")
    b.flush_progress()  # what the background flusher does about once a second
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.integration  # a second process, killed with -9
def test_kill_9_then_restart_reconciles_once(catalog, data_dir, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SERVER)
    proc = subprocess.run([sys.executable, str(script), str(data_dir)], capture_output=True,
                          text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    b = Billing.open(catalog, data_dir=data_dir, progress_interval_s=0)
    key = b.list_keys()[0]
    assert b.open_reservations() == []  # not this front's: the dead process held it
    assert b.budget_state(key).reserved_micro_usd > 0
    # its process is gone from this host: no need to wait for its lease to run out
    assert b.reconcile_open_reservations() == 1
    entry = b.get_entry("doomed")
    assert entry is not None
    assert (entry.prompt_tokens, entry.completion_tokens, entry.tier_delivered) == (
        50, 20, "standard")
    assert entry.amount_micro_usd == catalog["standard"].cost_micro_usd(50, 0, 20)
    assert b.reconcile_open_reservations() == 0
    assert b.open_reservations() == []
    b.close()
