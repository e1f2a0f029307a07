"""Host time of the scheduler and the `tier` policy per step, on the simulated H200 loads.

Two loads on the step costs the policy fitted on an H200 (Llama-3.1-8B): the benchmark's mix
of the open tiers at 18 requests/s (a long queue), and a crowd of mostly free requests with
long outputs (~200 running). Prints the median and p90 `Scheduler.schedule` time, and a
fingerprint of each run's summary, so that a change meant to be faster can be shown to change
nothing else. Compare two checkouts by running it with each one's `src` on PYTHONPATH:

    PYTHONPATH=/path/to/a/src .venv/bin/python tools/policy_host_time.py
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time

from tokenfactory.bench.policy_sim import SimLoad, simulate_tally
from tokenfactory.engine import scheduler as scheduler_module
from tokenfactory.scheduling.calibration import step_cost
from tokenfactory.tiers import load_tiers

H200_COST = step_cost("h200-llama-8b")
H200_PROBE = step_cost("h200-llama-8b-probe")
LOADS = {
    "18/s": (SimLoad(rate=18, duration_s=20, mix="free=0.4,standard=0.3,high=0.2",
                     input_len="lognormal:512,0.6", output_len="lognormal:256,0.5", seed=0),
             {"stall_share": 0.001, "stall_s": 0.5}),
    "crowd": (SimLoad(rate=40, duration_s=6, mix="free=0.8,standard=0.1,high=0.1",
                      input_len="lognormal:256,0.6", output_len="lognormal:1024,0.3", seed=0),
              {}),
}


def main() -> None:
    times: list[float] = []
    schedule = scheduler_module.Scheduler.schedule

    def timed(self, now=None):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = schedule(self, now)
        times.append(time.perf_counter() - start)
        return out

    scheduler_module.Scheduler.schedule = timed  # type: ignore[method-assign]
    for name, (load, extra) in LOADS.items():
        times.clear()
        summary = simulate_tally(
            "tier", load, load_tiers(preset="gpu"), cost=H200_COST, max_num_seqs=256,
            num_blocks=60_000, step_prior=H200_PROBE, **extra,
        ).summary()
        digest = hashlib.md5(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:12]
        p90 = sorted(times)[int(0.9 * len(times))]
        median = statistics.median(times)
        print(f"{name}: {len(times)} steps, schedule median {median * 1e3:.3f} ms,"
              f" p90 {p90 * 1e3:.3f} ms; result {digest}")


if __name__ == "__main__":
    main()
