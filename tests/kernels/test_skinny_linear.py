"""skinny_linear: agreement with F.linear, the AVX512 and AMX paths, fallbacks."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from tokenfactory.kernels import _build, native, skinny
from tokenfactory.kernels.skinny import skinny_linear

HAS_CPU = skinny._REQUIRED_CPU <= _build.cpu_flags()

needs_native = pytest.mark.skipif(
    not (HAS_CPU and native.load()),
    reason="native skinny_linear needs a CPU with AVX512-BF16 (/proc/cpuinfo avx512_bf16)"
    if not HAS_CPU
    else "the native library did not build here",
)

SHAPES = [  # (N, K): odd N, N below/around the tile sizes, K tails that are not multiples of 32
    (1, 32),
    (7, 64),
    (17, 96),
    (33, 576),
    (50, 40),
    (100, 576),
    (129, 1536),
    (576, 576),
    (5, 7),
]


# Each test sees the kernel as freshly imported, whatever the environment says.
pytestmark = pytest.mark.usefixtures("fresh_skinny")


@pytest.fixture(params=["avx512", "amx"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per kernel path; force the path by moving the AMX threshold."""
    if not skinny.available():
        pytest.skip("native kernel unavailable")
    if request.param == "amx":
        if not skinny.uses_amx():
            pytest.skip("CPU or kernel without AMX-BF16")
        monkeypatch.setattr(skinny, "_amx_min_m", 1)
    else:
        monkeypatch.setattr(skinny, "_amx_min_m", skinny.MAX_M + 1)
    return request.param


def _inputs(
    m: int, n: int, k: int, bias: bool, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(torch.bfloat16)
    b = torch.randn(n, generator=g).to(torch.bfloat16) if bias else None
    return x, w, b


def _check(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """y must be the fp32 result of the same bf16 inputs, rounded once to bf16."""
    ref = F.linear(x.float(), w.float(), None if b is None else b.float())
    assert y.dtype == torch.bfloat16
    assert y.shape == ref.shape
    # bf16 rounding is at most half an ulp (2^-9 relative); allow one ulp plus slack for
    # the fp32 summation order differing from the reference's.
    torch.testing.assert_close(y.float(), ref, rtol=2**-8, atol=1e-3)


@needs_native
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("m", range(1, 9))
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_matches_fp32_reference(path: str, m: int, n: int, k: int, bias: bool) -> None:
    x, w, b = _inputs(m, n, k, bias)
    _check(skinny_linear(x, w, b), x, w, b)


# Batched decode (M > 8) runs the AMX kernel in 16-row tiles of x, in pairs: M around tile
# and pair boundaries; N with leftover rows (N % 16, done on AVX512) and odd 16-row blocks.
BATCH_M = [9, 15, 16, 17, 31, 32, 33, 48, 64, 100, 128, 256]
BATCH_SHAPES = [(5, 64), (16, 32), (17, 96), (48, 64), (100, 576), (129, 1536), (576, 576)]


@pytest.fixture
def amx() -> None:
    if not skinny.available() or not skinny.uses_amx():
        pytest.skip("batched kernel needs AMX-BF16")


@needs_native
@pytest.mark.parametrize("n,k", BATCH_SHAPES)
@pytest.mark.parametrize("m", BATCH_M)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_batched_matches_fp32_reference(amx: None, m: int, n: int, k: int, bias: bool) -> None:
    x, w, b = _inputs(m, n, k, bias, seed=m * 7 + n)
    y = torch.full((m, n), float("nan"), dtype=torch.bfloat16)
    assert skinny_linear(x, w, b, out=y) is y
    _check(y, x, w, b)  # also: every element written (no NaN left over)


@needs_native
@pytest.mark.parametrize("seed", range(6))
def test_batched_random_shapes(amx: None, seed: int) -> None:
    g = torch.Generator().manual_seed(100 + seed)
    m = int(torch.randint(9, skinny.MAX_M + 1, (1,), generator=g))
    n = int(torch.randint(1, 700, (1,), generator=g))
    k = 32 * int(torch.randint(1, 40, (1,), generator=g))
    x, w, b = _inputs(m, n, k, bias=seed % 2 == 0, seed=seed)
    _check(skinny_linear(x, w, b), x, w, b)


@needs_native
@pytest.mark.parametrize("k", [40, 100])
def test_batched_k_not_multiple_of_32_falls_back(amx: None, k: int) -> None:
    # The batched kernel needs whole 32-element K chunks; F.linear takes the rest.
    x, w, b = _inputs(24, 50, k, bias=True, seed=k)
    assert not skinny.should_use(24, 50, k)
    torch.testing.assert_close(skinny_linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)


@needs_native
def test_batched_strided_rows_and_out(amx: None) -> None:
    _, w, b = _inputs(40, 70, 96, bias=True, seed=12)
    x = torch.randn(40, 160).to(torch.bfloat16)[:, 32:128]  # rows 160 elements apart
    out_big = torch.full((40, 100), 7.0, dtype=torch.bfloat16)
    out = out_big[:, 10:80]
    assert skinny_linear(x, w, b, out=out) is out
    _check(out, x, w, b)
    assert bool((out_big[:, :10] == 7).all()) and bool((out_big[:, 80:] == 7).all())


@needs_native
def test_batched_thread_count_does_not_change_results(amx: None) -> None:
    x, w, b = _inputs(64, 3072, 576, bias=True, seed=13)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = skinny_linear(x, w, b)
        torch.set_num_threads(max(2, before))
        many = skinny_linear(x, w, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)
    _check(many, x, w, b)


@needs_native
@pytest.mark.parametrize("m", [1, 3, 8])
def test_within_one_ulp_of_f_linear(path: str, m: int) -> None:
    x, w, b = _inputs(m, 1000, 576, bias=True, seed=1)
    y, ref = skinny_linear(x, w, b).float(), F.linear(x, w, b).float()
    ulp = ref.abs().clamp_min(2**-126) * 2**-7
    assert bool(((y - ref).abs() <= ulp).all())


@needs_native
def test_strided_rows_and_out(path: str) -> None:
    _, w, b = _inputs(4, 70, 96, bias=True, seed=2)
    x_big = torch.randn(4, 160).to(torch.bfloat16)
    x = x_big[:, 32:128]  # rows 160 elements apart
    out_big = torch.full((4, 100), 7.0, dtype=torch.bfloat16)
    out = out_big[:, 10:80]
    y = skinny_linear(x, w, b, out=out)
    assert y is out
    _check(out, x, w, b)
    assert bool((out_big[:, :10] == 7).all()) and bool((out_big[:, 80:] == 7).all())


@needs_native
def test_leading_dims_and_vector(path: str) -> None:
    x, w, b = _inputs(6, 40, 64, bias=True, seed=3)
    y = skinny_linear(x.view(2, 3, 64), w, b)
    assert y.shape == (2, 3, 40)
    _check(y.view(6, 40), x, w, b)
    v = skinny_linear(x[0], w, b)
    assert v.shape == (40,)
    _check(v.view(1, 40), x[:1], w, b)
    out = torch.empty(2, 3, 40, dtype=torch.bfloat16)
    assert skinny_linear(x.view(2, 3, 64), w, b, out=out) is out
    _check(out.view(6, 40), x, w, b)


@needs_native
def test_thread_count_does_not_change_results(path: str) -> None:
    x, w, _ = _inputs(4, 3072, 576, bias=False, seed=4)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = skinny_linear(x, w)
        torch.set_num_threads(max(2, before))
        many = skinny_linear(x, w)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)  # every output is summed by exactly one thread


@needs_native
def test_concurrent_python_threads(path: str) -> None:
    # Several Python threads can be inside the kernel at once.
    x, w, b = _inputs(3, 300, 576, bias=True, seed=5)
    expected = skinny_linear(x, w, b)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                assert torch.equal(skinny_linear(x, w, b), expected)
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@needs_native
def test_shares_torch_openmp_runtime() -> None:
    # A second OpenMP runtime would bring a second thread pool fighting torch's for cores.
    # Checked in a fresh process: other test dependencies (sentencepiece) bring their own.
    code = (
        "from pathlib import Path; import torch; from tokenfactory.kernels import skinny\n"
        "assert skinny.available()\n"
        "maps = Path('/proc/self/maps').read_text()\n"
        "print(len({l.split()[-1] for l in maps.splitlines() if 'libgomp' in l}))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.strip()) <= 1


@needs_native
def test_should_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skinny, "BATCHED", True)
    assert skinny.should_use(1, 576, 576)
    assert skinny.should_use(8, 49152, 576)
    assert not skinny.should_use(skinny.MAX_M + 1, 576, 576)  # past MAX_M: oneDNN's GEMM
    assert not skinny.should_use(1, 8, 64)  # tiny: call overhead dominates
    if skinny.uses_amx():  # batched decode: the AMX kernel, while x stays small
        assert skinny.should_use(64, 3072, 576)
        assert skinny.should_use(256, 49152, 576)
        assert skinny.should_use(64, 4096, 4096)
        assert not skinny.should_use(256, 4096, 4096)  # x too large: oneDNN's blocking wins
        assert not skinny.should_use(64, 576, 600)  # K % 32 != 0
    else:
        assert not skinny.should_use(9, 576, 576)
    monkeypatch.setattr(skinny, "BATCHED", False)
    assert not skinny.should_use(64, 3072, 576)
    assert skinny.should_use(8, 3072, 576)


@pytest.fixture
def built_without_amx() -> None:
    if not skinny.available() or native.amx():
        pytest.skip("needs the library built without AMX")


@needs_native
@pytest.mark.parametrize("m", [1, 4, 8])
def test_library_built_without_amx(built_without_amx: None, m: int) -> None:
    # CPUs with AVX512-BF16 but no AMX get a build without AMX; asking the operator for AMX
    # must quietly run AVX512.
    x, w, b = _inputs(m, 75, 576, bias=True, seed=9)
    _check(torch.ops.tokenfactory.skinny_linear(x, w, b, True), x, w, b)


@needs_native
def test_library_built_without_amx_rejects_batches(built_without_amx: None) -> None:
    # M > 8 exists only on AMX: the operator refuses it, skinny_linear then uses F.linear.
    x, w, _ = _inputs(16, 32, 64, bias=False)
    with pytest.raises(RuntimeError, match="AMX"):
        torch.ops.tokenfactory.skinny_linear(x, w, None, True)
    torch.testing.assert_close(skinny_linear(x, w), F.linear(x, w), rtol=0, atol=0)


@pytest.mark.parametrize(
    "case",
    [
        "too_many_rows",
        "float32",
        "strided_weight",
        "vector_weight",
        "bias_dtype",
        "grad",
        "bad_out",
    ],
)
def test_unsupported_inputs_fall_back(case: str) -> None:
    x, w, b = _inputs(2, 24, 64, bias=True, seed=6)
    out = None
    if case == "too_many_rows":
        x = torch.randn(skinny.MAX_M + 1, 64).to(torch.bfloat16)
    elif case == "float32":
        x, w, b = x.float(), w.float(), b.float()  # type: ignore[union-attr]
    elif case == "strided_weight":
        w = torch.randn(64, 24).to(torch.bfloat16).t()
    elif case == "vector_weight":
        w, b = w[0].contiguous(), None
    elif case == "bias_dtype":
        b = b.float()  # type: ignore[union-attr]
    elif case == "grad":
        w = w.clone().requires_grad_()
    elif case == "bad_out":
        out = torch.empty(24, 2, dtype=torch.bfloat16).t()
    if case == "bias_dtype":  # F.linear rejects mixed dtypes: so must the fallback
        with pytest.raises(RuntimeError):
            F.linear(x, w, b)
        with pytest.raises(RuntimeError):
            skinny_linear(x, w, b)
        return
    y = skinny_linear(x, w, b, out=out)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=0, atol=0)
    if case == "grad":
        assert y.requires_grad  # the autograd graph came from F.linear
    if out is not None:
        assert y is out


def test_env_var_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.DISABLE_ENV, "1")
    skinny._reset()
    assert not skinny.available()
    assert not skinny.should_use(1, 576, 576)
    x, w, b = _inputs(2, 30, 64, bias=True, seed=7)
    torch.testing.assert_close(skinny_linear(x, w, b), F.linear(x, w, b), rtol=0, atol=0)
    assert skinny._fn is None  # never built or loaded


def test_missing_cpu_feature_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset({"avx2"}))
    assert not skinny.available()
    x, w, _ = _inputs(1, 30, 64, bias=False, seed=8)
    torch.testing.assert_close(skinny_linear(x, w), F.linear(x, w), rtol=0, atol=0)
