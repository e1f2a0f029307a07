"""Python's garbage collector in a latency-bound process: freeze the startup heap, watch pauses.

A collection of the oldest generation walks every tracked object, and a loaded model, its
tokenizer and the web stack are some 400,000 of them: in the serving process on the 2-core
reference machine one such collection took 160-190 ms (`tools/gc_pause_check.py`), during
which the engine thread (and every stream) stands still, more than a fast tier's whole pacing
margin. How often one comes depends on what requests allocate (none in two 60 s loads, two
in another). Objects alive after start-up live as long as the process, so `freeze_heap` moves
them to the permanent generation, which collections skip (after it, the same collection took
under 1 ms); what requests allocate is still collected as usual. vLLM and SGLang freeze
their heaps after start-up for the same reason.

`GcPauseWatch` times every collection (a `gc.callbacks` hook: process-wide by nature) and
reports it, e.g. to a metrics histogram, and logs the long ones.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def freeze_heap() -> int:
    """Collect what is garbage now, then exempt every surviving object from later
    collections. Returns how many objects are frozen in all."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@dataclass
class GcPauseWatch:
    """Times each garbage collection; `on_pause(generation, seconds)` hears of every one and
    collections longer than `warn_s` are logged as warnings."""

    on_pause: Callable[[int, float], None] | None = None
    warn_s: float = 0.05
    count: int = 0
    longest_s: float = 0.0
    _started: float | None = field(default=None, repr=False)

    def install(self) -> GcPauseWatch:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        return self

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        pause = time.perf_counter() - self._started
        self._started = None
        self.count += 1
        self.longest_s = max(self.longest_s, pause)
        generation = int(info.get("generation", -1))
        if self.on_pause is not None:
            self.on_pause(generation, pause)
        if pause >= self.warn_s:
            log.warning(
                "garbage collection (generation %d) paused the process for %.0f ms",
                generation,
                pause * 1000,
            )
