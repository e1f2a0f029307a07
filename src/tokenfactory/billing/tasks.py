"""Accounting per task: a caller's task id on each request, and a budget per task on a key.

A task id is the caller's name for a unit of work made of many requests (an agent's run):
1 to 128 printable characters. A key's task budget caps what requests carrying one task id
may spend with that key (spent + reserved, like the key's own budget); requests without a
task id are not limited by it.

What each (key, task) has spent and holds is a `holds` counter in the database, like the
key's own.
"""

from __future__ import annotations

from tokenfactory.billing.errors import BillingInputError

MAX_TASK_ID_CHARS = 128


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
