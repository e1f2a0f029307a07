"""Logprobs of a step and the `SamplerOutput` that carries them with the sampled tokens.

Logprobs describe the model's raw distribution, before penalties and filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tokenfactory.engine.sampling.blocks import _topk
from tokenfactory.engine.sampling.workspace import _index, _Workspace
from tokenfactory.engine.sampling_params import SamplingParams


@dataclass
class TokenLogprob:
    """Logprobs at one generated position."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the top-k alternatives (token_id, logprob), best first


@dataclass
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[TokenLogprob | None]  # None where the row's params.logprobs is None


@dataclass
class DeviceOutput:
    """One call's sampled ids as the device holds them, and everything the host needs of it
    packed in one tensor (`flat`), so a single transfer brings it over (`host_output`)."""

    token_ids: torch.Tensor  # [n] on the device
    flat: torch.Tensor  # the ids (int64), or ids, chosen and top logprobs (float64)
    params: list[SamplingParams]
    lp_rows: list[int]  # rows that want logprobs
    k: int  # top alternatives carried per logprob row


def device_output(
    ids: torch.Tensor, raw: torch.Tensor, params: list[SamplingParams], ws: _Workspace
) -> DeviceOutput:
    """The logprobs the rows ask for, computed on the device; nothing waits for it here."""
    lp_rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    if not lp_rows:
        return DeviceOutput(ids, ids, params, lp_rows, 0)
    if len(lp_rows) == len(params):
        sub, lp_ids = raw, ids
    else:
        index = _index(lp_rows, raw.device)
        out = ws.get("rows", len(lp_rows), raw.shape[1], raw.device)
        sub, lp_ids = torch.index_select(raw, 0, index, out=out), ids.index_select(0, index)
    k = min(max(params[i].logprobs or 0 for i in lp_rows), raw.shape[1])
    if k:
        top_vals, top_ids = _topk(sub, k)  # sorted, best first
        m = top_vals[:, :1]
    else:
        m = sub.amax(dim=-1, keepdim=True)
    # log_softmax without materialising it: logprob = (x - max) - log(sum(exp(x - max))).
    e = torch.sub(sub, m, out=ws.get("work", sub.shape[0], sub.shape[1], raw.device))
    log_z = e.exp_().sum(dim=-1, keepdim=True).log_()
    chosen = (sub.gather(1, lp_ids.unsqueeze(1)) - m - log_z).squeeze(1)
    parts = [ids.double(), chosen.double()]
    if k:
        parts += [(top_vals - m - log_z).double().flatten(), top_ids.double().flatten()]
    # float64 holds token ids exactly.
    return DeviceOutput(ids, torch.cat(parts), params, lp_rows, k)


def host_output(out: DeviceOutput, flat: list) -> SamplerOutput:
    """The SamplerOutput of `out`, from its `flat` tensor brought to the host as a list."""
    n, k, lp_rows, params = len(out.params), out.k, out.lp_rows, out.params
    token_ids = [int(t) for t in flat[:n]]
    if not lp_rows:
        return SamplerOutput(token_ids=token_ids, logprobs=[None] * n)
    chosen_lp = flat[n : n + len(lp_rows)]
    top_vals_flat = flat[n + len(lp_rows) : n + len(lp_rows) * (1 + k)]
    top_ids_flat = flat[n + len(lp_rows) * (1 + k) :]
    out_lp: list[TokenLogprob | None] = [None] * n
    for j, i in enumerate(lp_rows):
        want = min(params[i].logprobs or 0, k)
        base = j * k
        top = [(int(top_ids_flat[base + r]), top_vals_flat[base + r]) for r in range(want)]
        out_lp[i] = TokenLogprob(token_id=token_ids[i], logprob=chosen_lp[j], top=top)
    return SamplerOutput(token_ids=token_ids, logprobs=out_lp)
