"""The fused add+RMSNorm kernel computes what the PyTorch ops compute."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, fused_ops

needs_native = pytest.mark.skipif(
    _build.native_disabled() or not fused_ops._load(),
    reason="native library unavailable (no x86-64-v3 CPU or compiler) or disabled",
)


def _reference_add_norm(x, residual, weight, eps):
    new_res = x if residual is None else x + residual
    return F.rms_norm(new_res, (x.shape[-1],), weight, eps), new_res


@needs_native
@pytest.mark.parametrize("rows", [1, 3, 8, 16, 64, 256])
@pytest.mark.parametrize("width", [64, 77, 576, 1000])  # 77: the scalar tail after 8-wide
@pytest.mark.parametrize("with_residual", [False, True])
def test_add_rms_norm_matches_torch(rows, width, with_residual, monkeypatch):
    monkeypatch.setattr(fused_ops, "MAX_NORM_ROWS", 256)  # the kernel itself, at any rows
    g = torch.Generator().manual_seed(rows * width)
    x = (torch.randn(rows, width, generator=g) * 3).bfloat16()
    res = (torch.randn(rows, width, generator=g) * 3).bfloat16() if with_residual else None
    w = torch.randn(width, generator=g).bfloat16()
    want_out, want_res = _reference_add_norm(x, None if res is None else res.clone(), w, 1e-5)
    out, new_res = fused_ops.add_rms_norm(x, res, w, 1e-5)
    assert torch.equal(new_res, want_res)
    diff = (out.float() - want_out.float()).abs()
    # Same roundings; only the float32 sum of squares may differ in its last bits.
    assert diff.max() <= 2**-6 * want_out.float().abs().max()
    assert (diff == 0).float().mean() > 0.95


@needs_native
def test_add_rms_norm_keeps_nan_and_inf_like_torch():
    x = torch.tensor([[1.0, float("nan"), float("inf"), -2.0] * 4], dtype=torch.bfloat16)
    res = torch.ones_like(x)
    out, new_res = fused_ops.add_rms_norm(x, res.clone(), torch.ones(16).bfloat16(), 1e-5)
    want_out, want_res = _reference_add_norm(x, res, torch.ones(16).bfloat16(), 1e-5)
    assert torch.equal(new_res.isnan(), want_res.isnan())
    assert torch.equal(new_res.nan_to_num(), want_res.nan_to_num())
    assert out.isnan().all() and want_out.isnan().all()


def test_large_batches_and_other_dtypes_use_torch():
    x = torch.randn(fused_ops.MAX_NORM_ROWS + 8, 64)
    w = torch.ones(64)
    out, res = fused_ops.add_rms_norm(x, x.clone(), w, 1e-6)
    want, want_res = _reference_add_norm(x, x.clone(), w, 1e-6)
    assert torch.equal(out, want) and torch.equal(res, want_res)
