"""GPU-path tests. With a CUDA GPU they run there; without one, the Triton kernels run on CPU
tensors in Triton's interpreter (TRITON_INTERPRET=1, set here before any kernel module is
imported), and tests that need real CUDA skip with a reason. Without Triton installed, the
kernel tests skip too (it ships with CUDA builds of PyTorch; `pip install triton` on CPU)."""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

if HAS_TRITON and not HAS_CUDA:
    # Triton 3.6's interpreter turns a loaded scalar into a loop bound with int() on a
    # one-element array, which numpy >= 2.4 refuses; the compiled GPU path is unaffected.
    import triton.runtime.interpreter as _interp

    if hasattr(_interp, "_patch_lang_tensor") and not getattr(_interp, "_tf_patched", False):
        _orig = _interp._patch_lang_tensor

        def _patched(tensor, scope):  # type: ignore[no-untyped-def]
            _orig(tensor, scope)
            scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

        _interp._patch_lang_tensor = _patched
        _interp._tf_patched = True

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if HAS_CUDA else "cpu")
