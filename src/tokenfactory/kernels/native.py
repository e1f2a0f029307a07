"""The native kernels' library, loaded once per process as ``torch.ops.tokenfactory`` operators.

``load()`` builds the library for this CPU (or finds it in the cache, see ``_build``), loads it
and registers each operator's fake implementation, so ``torch.compile`` traces through the
kernels and profilers name them. A CPU without x86-64-v3, a missing compiler or a failed build
is logged once and ``load()`` answers False from then on: callers fall back to PyTorch, and
nothing here raises.
"""

from __future__ import annotations

import logging
import threading

import torch

from tokenfactory.kernels import _build

log = logging.getLogger(__name__)

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet in this process
_amx = False


def load() -> bool:
    """True if the operators are registered and usable here (``TOKENFACTORY_NO_NATIVE`` unset).

    The first call builds the library when the cache lacks it (about 10 s on 2 cores), later
    ones cost a global read.
    """
    global _loaded
    if _build.native_disabled():
        return False
    if _loaded is None:
        with _lock:
            if _loaded is None:
                _loaded = _load_locked()
    return _loaded


def amx() -> bool:
    """True if the library has AMX kernels and Linux granted this process AMX state."""
    return load() and _amx


def _load_locked() -> bool:
    global _amx
    cpu = _build.cpu_flags()
    if not _build.BASE_CPU <= cpu:
        log.info("CPU lacks x86-64-v3 (%s): native kernels off", sorted(_build.BASE_CPU - cpu))
        return False
    want_amx = _build.AMX_CPU <= cpu
    for amx in (True, False) if want_amx else (False,):
        try:
            _build.load_library(_build.build_flags(cpu, amx))
        except Exception as e:  # any failure means "use the PyTorch path"
            more = ", trying without AMX" if amx else ", using PyTorch instead"
            # the compiler's last words say why; its full command lines are noise here
            log.warning("native kernels unavailable%s: %s", more, str(e)[-3000:])
            continue
        _register_fakes()
        # The kernels may only touch AMX state once Linux granted it to the process.
        _amx = amx and torch.ops.tokenfactory.amx_init() == 0
        return True
    return False


def _register_fakes() -> None:
    """Shapes and dtypes of each operator's result, for tracing without running it."""
    lib = "tokenfactory::"

    @torch.library.register_fake(lib + "skinny_linear")
    def _skinny_linear(x, w, bias=None, use_amx=False):  # type: ignore[no-untyped-def]
        return x.new_empty((x.shape[0], w.shape[0]))

    @torch.library.register_fake(lib + "skinny_linear_out")
    def _skinny_linear_out(x, w, bias, use_amx, out):  # type: ignore[no-untyped-def]
        return None

    @torch.library.register_fake(lib + "skinny_linear_q4_1")
    def _skinny_linear_q4_1(x, codes, dm, bias=None):  # type: ignore[no-untyped-def]
        return x.new_empty((x.shape[0], codes.shape[0]))

    @torch.library.register_fake(lib + "skinny_linear_q8_0")
    def _skinny_linear_q8_0(x, codes, d, bias=None):  # type: ignore[no-untyped-def]
        return x.new_empty((x.shape[0], codes.shape[0]))

    @torch.library.register_fake(lib + "paged_decode_attention")
    def _paged(q, k_cache, v_cache, block_tables, context_lens, scale):  # type: ignore[no-untyped-def]
        return q.new_empty(q.shape)

    @torch.library.register_fake(lib + "paged_decode_attention_out")
    def _paged_out(q, k_cache, v_cache, block_tables, context_lens, scale, out):  # type: ignore[no-untyped-def]
        return None

    @torch.library.register_fake(lib + "add_rms_norm")
    def _add_rms_norm(x, residual, weight, eps, add):  # type: ignore[no-untyped-def]
        return x.new_empty(x.shape)

    @torch.library.register_fake(lib + "decode_layers")
    def _decode_layers(  # type: ignore[no-untyped-def]
        x, cos, sin, slots, block_tables, context_lens, k_caches, v_caches, norms, codes,
        scales, heads, eps, attn_scale,
    ):
        return x.new_empty(x.shape), x.new_empty(x.shape)
