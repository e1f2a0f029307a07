"""The native library: built with cpp_extension, cached, registered as torch operators that
torch.compile traces, and a failed build that falls back without raising."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tokenfactory.kernels import _build, native

needs_native = pytest.mark.skipif(
    not (native.load() and _build.BF16_CPU <= _build.cpu_flags()),
    reason="needs the native library and a CPU with AVX512-BF16",
)

OPS = [
    "skinny_linear",
    "skinny_linear_out",
    "skinny_linear_q4_1",
    "paged_decode_attention",
    "paged_decode_attention_out",
    "add_rms_norm",
]


def _bf16(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


@needs_native
def test_operators_are_registered() -> None:
    for name in OPS:
        assert hasattr(torch.ops.tokenfactory, name), name
    loaded = [p for p in torch.ops.loaded_libraries if _build.LIB_NAME in p]
    assert len(loaded) == 1  # one library per process


@needs_native
def test_profiler_names_the_kernels() -> None:
    from tokenfactory.kernels import skinny

    x, w = _bf16(2, 64), _bf16(40, 64, seed=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        skinny.skinny_linear(x, w)
    assert "tokenfactory::skinny_linear" in {e.key for e in prof.key_averages()}


@needs_native
def test_opcheck() -> None:
    # Schema, fake (meta) implementation and dispatch agree with what the kernels do.
    ops = torch.ops.tokenfactory
    x, w, b = _bf16(3, 64), _bf16(40, 64, seed=1), _bf16(40, seed=2)
    torch.library.opcheck(ops.skinny_linear.default, (x, w, b, False))
    torch.library.opcheck(
        ops.add_rms_norm.default, (x, _bf16(3, 64, seed=3), _bf16(64), 1e-5, True)
    )
    codes = torch.randint(0, 256, (40, 32), dtype=torch.uint8)
    dm = torch.rand(40, 2, 2)
    torch.library.opcheck(ops.skinny_linear_q4_1.default, (x, codes, dm, b))
    k = _bf16(4, 16, 2, 64, seed=4)
    tables = torch.tensor([[0, 1], [2, 3]])
    lens = torch.tensor([20, 5])
    q = _bf16(2, 6, 64, seed=5)
    torch.library.opcheck(ops.paged_decode_attention.default, (q, k, k, tables, lens, 0.125))


@needs_native
def test_torch_compile_traces_the_operators() -> None:
    # Through the functions the model calls: one graph, the kernels in it as operators.
    from tokenfactory.kernels import fused_ops, skinny

    assert skinny.available() and fused_ops._load()  # loaded before tracing, as in a server
    seen: list[str] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN202
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def fn(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor, nw: torch.Tensor) -> torch.Tensor:
        return fused_ops.add_rms_norm(skinny.skinny_linear(x, w), res, nw, 1e-5)[0]

    x, w, res, nw = _bf16(2, 64), _bf16(32, 64, seed=1), _bf16(2, 32, seed=2), _bf16(32)
    want_res = res.clone()
    want = fn(x, w, want_res, nw)
    torch._dynamo.reset()
    with torch.inference_mode():
        got = torch.compile(fn, backend=backend, fullgraph=True)(x, w, res, nw)
    assert torch.equal(got, want) and torch.equal(res, want_res)
    assert "tokenfactory.skinny_linear.default" in seen
    assert "tokenfactory.add_rms_norm.default" in seen


def test_disabled_by_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_build.DISABLE_ENV, "1")
    assert not native.load() and not native.amx()


# A broken compiler in a fresh process with an empty cache: every kernel reports itself
# unavailable, the PyTorch paths compute the results, one warning, nothing raised.
_BROKEN_BUILD = """
import logging
logging.basicConfig(level=logging.WARNING)
import torch, torch.nn.functional as F
from tokenfactory.kernels import fused_ops, paged_attention, q4_linear, skinny
assert not skinny.available() and not q4_linear.available() and not paged_attention.available()
x, w = torch.randn(2, 64).bfloat16(), torch.randn(32, 64).bfloat16()
assert torch.equal(skinny.skinny_linear(x, w), F.linear(x, w))
out, res = fused_ops.add_rms_norm(x, x.clone(), torch.ones(64).bfloat16(), 1e-5)
assert torch.equal(res, x + x)
print("ok")
"""


def test_failed_build_falls_back_and_logs_once(tmp_path: Path) -> None:
    if not _build.BASE_CPU <= _build.cpu_flags():
        pytest.skip("no x86-64-v3 CPU: nothing is built here")
    env = {
        **os.environ,
        "CXX": "/bin/false",
        _build.CACHE_ENV: str(tmp_path / "cache"),
    }
    env.pop(_build.DISABLE_ENV, None)
    res = subprocess.run(
        [sys.executable, "-c", _BROKEN_BUILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
    assert res.stderr.count("using PyTorch instead") == 1, res.stderr[-3000:]
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert [p.name for p in leftovers] == [".lock"]  # the failed build's directory is gone


def test_cache_builds_once_and_never_shows_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for cpp_extension.load: writes the library slowly into its build directory.
    from torch.utils import cpp_extension

    builds: list[str] = []
    partial_seen: list[Path] = []

    def fake_load(name: str, build_directory: str, **kwargs: object) -> str:
        builds.append(build_directory)
        out = Path(build_directory) / f"{name}.so"
        with open(out, "wb") as f:
            for _ in range(5):
                f.write(b"x" * 1000)
                f.flush()
                # final names are <cache>/<key>/<lib>.so; build directories are one level deeper
                partial_seen.extend(p for p in cache.glob("*/*.so") if p.stat().st_size != 5000)
                threading.Event().wait(0.01)
        return str(out)

    cache = tmp_path / "cache"
    monkeypatch.setenv(_build.CACHE_ENV, str(cache))
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    loaded: list[str] = []
    monkeypatch.setattr(torch.ops, "load_library", loaded.append)
    flags = _build.build_flags(frozenset(), amx=False)
    killed = cache / _build.cache_key(flags) / ".build-killed"  # a build killed half-way
    killed.mkdir(parents=True)
    (killed / "ops.o").write_bytes(b"partial")
    paths: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            paths.append(_build.load_library(flags))
        except BaseException as e:  # surfaced in the main thread below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1
    lib = paths[0]
    assert not partial_seen  # the final name only ever held a whole file
    assert lib.stat().st_size == 5000
    # no leftovers, the killed build's directory included
    assert sorted(p.name for p in lib.parent.iterdir()) == [".lock", lib.name]
    assert len(builds) == 1  # the others waited for the first build and loaded its result
    n = len(builds)
    assert _build.load_library(flags) == lib and len(builds) == n  # warm: no build
    assert loaded[-1] == str(lib)
    # Other flags: another cache entry.
    assert _build.load_library(_build.build_flags(_build.BF16_CPU, amx=False)) != lib


def test_no_library_on_a_cpu_without_x86_64_v3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_loaded", None)
    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset({"sse2"}))
    assert not native.load()  # logged, nothing raised, nothing built
