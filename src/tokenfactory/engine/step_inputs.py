"""One step's model inputs, built on the host with array ops and shipped in one copy.

A step is a list of query spans laid end to end in a flat token batch: span i owns rows
[q_start, q_start + q_len) and attends over the first context_len positions of its sequence
(its own tokens included), whose K/V live in the blocks of its block table. A decode is a
span with q_len == 1; a prompt chunk (or one after a prefix-cache hit) is a span with more
rows and context before it. A decode verifying k draft tokens is k + 1 single-token spans
over the same blocks, one per position: each row then runs exactly as the plain decode at its
position would (the same kernels, the same roundings).
Nothing below depends on which: the loop runs once per span (slices of the token lists),
and positions, slots and padded tables come from whole-array numpy ops.

Spans at the front with one token after some context are "decodes" (`num_decodes`):
attention backends may batch them, and the decode graphs run steps made only of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tokenfactory.engine.scheduler import SchedulerOutput


@dataclass
class StepInputs:
    """Host arrays of one step (int64), in the flat token order the model sees."""

    token_ids: np.ndarray  # [T]
    positions: np.ndarray  # [T]
    slots: np.ndarray  # [T] cache slot of each token: block * block_size + offset
    q_start: np.ndarray  # [S] first row of each span
    q_len: np.ndarray  # [S]
    context_len: np.ndarray  # [S] positions each span attends to, its own included
    block_tables: np.ndarray  # [S, W] the blocks of each span's context, padded with 0
    # [N] rows whose logits are sampled, in span order: the last of each span that samples,
    # and every row of a span that verifies a draft
    sample_rows: np.ndarray
    num_decodes: int  # spans 0..num_decodes-1 are single-token decodes (rows 0..D-1)
    decode_width: int  # block-table columns the decodes need

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_spans(self) -> int:
        return int(self.q_len.shape[0])

    @property
    def is_decode_only(self) -> bool:
        return self.num_decodes == self.num_spans

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything a device needs, by name (see `ship`)."""
        return {
            "token_ids": self.token_ids,
            "positions": self.positions,
            "slots": self.slots,
            "q_start": self.q_start,
            "q_len": self.q_len,
            "context_len": self.context_len,
            "block_tables": self.block_tables,
            "sample_rows": self.sample_rows,
        }


@dataclass(frozen=True)
class TokenFill:
    """Input tokens the host does not hold yet (asynchronous scheduling): the decodes at
    `rows` of this step read the tokens the step before sampled, at `source_rows` of
    `source`, which is still on the device."""

    rows: np.ndarray  # [F] rows of this step's flat token batch
    source_rows: np.ndarray  # [F] rows of `source`
    source: torch.Tensor  # the previous step's sampled ids, on the device

    def apply(self, token_ids: torch.Tensor) -> None:
        """Write the tokens into `token_ids` (on the device), without waiting for them."""
        index = ship({"rows": self.rows, "source": self.source_rows}, token_ids.device)
        token_ids.index_copy_(0, index["rows"], self.source.index_select(0, index["source"]))


def _span_tokens(prompt: list[int], output: list[int], start: int, end: int) -> list[int]:
    """Tokens [start, end) of prompt + output, as list slices (no per-token loop)."""
    n = len(prompt)
    if end <= n:
        return prompt[start:end]
    if start >= n:
        return output[start - n : end - n]
    return prompt[start:] + output[: end - n]


def build_step_inputs(step: SchedulerOutput, block_size: int) -> StepInputs:
    bs = block_size
    ids: list[int] = []
    tables: list[int] = []  # every span's block-table prefix, concatenated
    starts: list[int] = []  # position of each span's first token
    q_start: list[int] = []
    q_len: list[int] = []
    context_len: list[int] = []
    num_blocks: list[int] = []
    sample_rows: list[int] = []
    num_decodes = 0
    for chunk in step.chunks:  # scalars per span; nothing here runs per token
        seq, start, n = chunk.seq, chunk.start, chunk.num_tokens
        if chunk.draft:
            # A decode and the draft tokens it verifies: one single-token span per row, each
            # attending to the positions before it, so every row runs exactly as the plain
            # decode of that position would (the same decode kernel, the same roundings):
            # greedy output is the same with and without speculation.
            for i, token in enumerate([seq.token_at(start), *chunk.draft]):
                pos = start + i
                blocks = pos // bs + 1
                if pos > 0 and num_decodes == len(starts):
                    num_decodes += 1
                q_start.append(len(ids))
                sample_rows.append(len(ids))
                ids.append(token)
                tables += seq.block_table[:blocks]
                starts.append(pos)
                q_len.append(1)
                context_len.append(pos + 1)
                num_blocks.append(blocks)
            continue
        end = start + n
        q_start.append(len(ids))
        if n == 1:
            ids.append(seq.token_at(start))
            # Decodes lead the batch: a single token after a prompt chunk is not one.
            if start > 0 and num_decodes == len(starts):
                num_decodes += 1
        else:
            ids += _span_tokens(seq.prompt_token_ids, seq.output_token_ids, start, end)
        blocks = (end + bs - 1) // bs
        tables += seq.block_table[:blocks]
        starts.append(start)
        q_len.append(n)
        context_len.append(end)
        num_blocks.append(blocks)
        if chunk.samples:
            sample_rows.append(len(ids) - 1)

    # Whole-step arrays: the padded block tables, then every token's position and slot.
    width = max(num_blocks, default=1)
    nb = np.array(num_blocks, dtype=np.int64)
    block_tables = np.zeros((len(nb), width), dtype=np.int64)
    # Row-major boolean assignment fills each row's leading num_blocks entries in order.
    block_tables[np.arange(width) < nb[:, None]] = tables
    lens = np.array(q_len, dtype=np.int64)
    first = np.array(starts, dtype=np.int64)
    q0 = np.array(q_start, dtype=np.int64)
    positions = np.arange(len(ids), dtype=np.int64) + np.repeat(first - q0, lens)
    span_of_row = np.repeat(np.arange(len(nb)), lens)
    slots = block_tables[span_of_row, positions // bs] * bs + positions % bs
    return StepInputs(
        token_ids=np.array(ids, dtype=np.int64),
        positions=positions,
        slots=slots,
        q_start=q0,
        q_len=lens,
        context_len=np.array(context_len, dtype=np.int64),
        block_tables=block_tables,
        sample_rows=np.array(sample_rows, dtype=np.int64),
        num_decodes=num_decodes,
        decode_width=max(num_blocks[:num_decodes], default=1),
    )


def ship(
    arrays: dict[str, np.ndarray], device: torch.device, packed: bool | None = None
) -> dict[str, torch.Tensor]:
    """Int64 host arrays as tensors on `device`, by name. Off the CPU (or with `packed`) they
    travel packed in one buffer, on CUDA pinned and copied without blocking: one transfer
    per step, not one per array. On the CPU the tensors share the arrays' memory."""
    if not (device.type != "cpu" if packed is None else packed):
        return {name: torch.from_numpy(a) for name, a in arrays.items()}
    host = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays.values()]))
    if device.type == "cuda":
        buffer = host.pin_memory().to(device, non_blocking=True)
    else:
        buffer = host.to(device)
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, a in arrays.items():
        out[name] = buffer[offset : offset + a.size].view(a.shape)
        offset += a.size
    return out
