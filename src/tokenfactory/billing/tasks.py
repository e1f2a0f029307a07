"""Accounting per task: a caller's task id on each request, and a budget per task on a key.

A task id is the caller's name for a unit of work made of many requests (an agent's run):
1 to 128 printable characters. A key's task budget caps what requests carrying one task id
may spend with that key (spent + reserved, like the key's own budget); requests without a
task id are not limited by it.

`TaskMoney` is the in-memory side of that budget, kept under `Billing`'s lock: what each
(key, task) has spent (loaded from the ledger the first time the pair is seen, then kept up
to date by settlement) and what its open reservations hold.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenfactory.billing.errors import BillingInputError

MAX_TASK_ID_CHARS = 128

TaskKey = tuple[str, str]  # (key_id, task_id)


def check_task_id(value: str, what: str = "task id") -> str:
    """`value` when it is a usable task id; BillingInputError naming `what` otherwise."""
    if not isinstance(value, str):
        raise BillingInputError(f"{what} must be a string")
    if not value:
        raise BillingInputError(f"{what} must not be empty")
    if len(value) > MAX_TASK_ID_CHARS:
        raise BillingInputError(
            f"{what} has {len(value)} characters; the most is {MAX_TASK_ID_CHARS}"
        )
    if not value.isprintable():
        raise BillingInputError(f"{what} must be printable text without control characters")
    return value


@dataclass
class TaskMoney:
    """Spent and held micro-dollars per (key, task). Callers hold `lock`, the billing lock.

    A pair's spent amount is read from the ledger the first time it is needed. A settlement
    writes its ledger row outside the lock and counts it here after, so a first read waits
    until no settlement of that pair is between the two (else it could count one twice).
    """

    lock: threading.Condition
    load_spent: Callable[[str, str], int]  # the ledger's sum for a pair not read yet
    _spent: dict[TaskKey, int] = field(default_factory=dict)
    _held: dict[TaskKey, int] = field(default_factory=dict)
    _settling: dict[TaskKey, int] = field(default_factory=dict)

    def committed(self, key_id: str, task_id: str) -> int:
        """Spent + held for the pair (reads the ledger once per pair)."""
        return self.spent(key_id, task_id) + self._held.get((key_id, task_id), 0)

    def spent(self, key_id: str, task_id: str) -> int:
        pair = (key_id, task_id)
        while pair not in self._spent and self._settling.get(pair):
            self.lock.wait()
        if pair not in self._spent:
            self._spent[pair] = self.load_spent(key_id, task_id)
        return self._spent[pair]

    def held(self, key_id: str, task_id: str) -> int:
        return self._held.get((key_id, task_id), 0)

    def hold(self, key_id: str, task_id: str, amount: int) -> None:
        pair = (key_id, task_id)
        self._held[pair] = self._held.get(pair, 0) + amount

    def release(self, key_id: str, task_id: str, amount: int) -> None:
        pair = (key_id, task_id)
        left = self._held.get(pair, 0) - amount
        if left:
            self._held[pair] = left
        else:
            self._held.pop(pair, None)

    def begin_settle(self, key_id: str, task_id: str) -> None:
        pair = (key_id, task_id)
        self._settling[pair] = self._settling.get(pair, 0) + 1

    def end_settle(self, key_id: str, task_id: str, billed: int) -> None:
        """The pair's ledger row is written (`billed`: its amount, 0 when nothing new)."""
        pair = (key_id, task_id)
        left = self._settling.get(pair, 0) - 1
        if left > 0:
            self._settling[pair] = left
        else:
            self._settling.pop(pair, None)
        if pair in self._spent:
            self._spent[pair] += billed
        self.lock.notify_all()
