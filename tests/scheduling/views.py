"""Building a policy's view by hand, for tests that call a policy or its parts directly."""

from __future__ import annotations

from collections.abc import Sequence

from tokenfactory.scheduling.view import RequestView, SchedulerView


def view_of(
    running: Sequence[RequestView] = (),
    waiting: Sequence[RequestView] = (),
    now: float = 0.0,
    step_index: int = 1,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    chunked_prefill: bool = True,
    free_blocks: int = 4096,
    block_size: int = 16,
) -> SchedulerView:
    return SchedulerView(
        now=now,
        step_index=step_index,
        running=tuple(running),
        waiting=tuple(waiting),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        chunked_prefill=chunked_prefill,
        free_blocks=free_blocks,
        block_size=block_size,
    )
