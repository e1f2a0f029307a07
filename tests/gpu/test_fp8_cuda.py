"""FP8 weights on the GPU path: the one-launch Triton quantization of activations against the
PyTorch form (on the GPU, or interpreted on CPU), and on a CUDA GPU of compute capability 8.9+
the scaled matmul against its float reference and CUDA graphs against eager. Skipped, with the
reason, where they cannot run."""

from __future__ import annotations

import pytest
import torch

from tests.gpu.conftest import HAS_CUDA, needs_cuda, needs_triton

FP8_GPU = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)
needs_fp8_gpu = pytest.mark.skipif(
    not FP8_GPU, reason="needs a CUDA GPU of compute capability 8.9 or newer (FP8)"
)
pytestmark = needs_triton


@pytest.mark.parametrize("rows, k", [(1, 576), (5, 1536), (3, 2500), (0, 64)])
def test_triton_row_quantization_matches_the_torch_form(device, rows, k):
    from tokenfactory.kernels import fp8_linear, triton_fp8

    g = torch.Generator().manual_seed(rows * k)
    x = torch.randn(rows, k, generator=g) * torch.logspace(-2, 1, max(rows, 1))[:rows, None]
    if rows:
        x[0, 7] = 40.0  # an outlier channel sets its row's scale
    x = x.bfloat16().to(device)
    codes, scale = triton_fp8.quantize_rows(x)
    ref_codes, ref_scale = fp8_linear.quantize_rows_torch(x)
    assert torch.equal(scale, ref_scale)
    got, want = codes.float(), ref_codes.float()
    if HAS_CUDA:
        assert torch.equal(got, want)  # the hardware cast rounds to nearest even, as torch
    else:
        # Triton 3.6's interpreter emulates the e4m3 cast in numpy, unlike the GPU's
        # round-to-nearest-even: ties go away from zero, subnormals flush, and a value that
        # rounds up to a power of two loses the carry (124.1 -> 64). Outside those (normal
        # codes that are not powers of two) the codes agree, up to the ties.
        normal = (want.abs() >= 2.0**-6) & (want.abs().log2().frac() != 0)
        g, w = got[normal], want[normal]
        assert float((g == w).float().mean()) > 0.98 if rows else True
        assert bool(((g / w - 1).abs() <= 0.125).all())  # a tie: one e4m3 step apart


@pytest.mark.skipif(HAS_CUDA and not FP8_GPU, reason="this GPU has no FP8 (capability < 8.9)")
def test_triton_ops_route_fp8_layers_to_the_scaled_matmul(device):
    from tests.engine.engine_fixtures import TINY
    from tokenfactory.engine.config import EngineConfig
    from tokenfactory.engine.model_setup import build_model
    from tokenfactory.engine.ops_backends import TritonOps
    from tokenfactory.kernels.fp8_linear import fp8_linear

    config = EngineConfig(device=device.type, dtype="bfloat16", quantization="fp8")
    model = build_model(TINY, config, state_dict=None)
    x = torch.randn(3, TINY.hidden_size, device=device).bfloat16()
    for layer in (model.decoder_layers[0].qkv_proj, model.decoder_layers[1].gate_up_proj):
        assert layer.fp8 is not None
        assert torch.equal(TritonOps().linear(layer, x, True), fp8_linear(x, layer.fp8))


def _engine(quantization: str | None, graphs: bool = True):
    """The small random config on CUDA, weights set (std 0.1) before they are quantized."""
    from tokenfactory.bench.gpu_check import SMALL
    from tokenfactory.engine.config import EngineConfig
    from tokenfactory.engine.engine import Engine
    from tokenfactory.engine.model_setup import build_model

    config = EngineConfig(
        device="cuda", dtype="bfloat16", max_model_len=2048, max_num_seqs=16, seed=0,
        cuda_graphs=graphs, quantization=quantization,
    )  # fmt: skip
    model = build_model(SMALL, EngineConfig(**{**vars(config), "quantization": None}), None)
    model.init_random_weights(seed=1, std=0.1)
    if quantization == "fp8":
        model.quantize_fp8()  # what build_model does once the weights are in
    return Engine(model, None, config, model_name=SMALL.name)


@needs_cuda
@needs_fp8_gpu
def test_scaled_matmul_matches_the_dequantized_product_on_cuda():
    from tokenfactory.kernels.fp8_linear import Fp8Weight, fp8_linear, quantize_rows

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(5, 512, device="cuda", generator=g).bfloat16()
    w = Fp8Weight.quantize(torch.randn(1408, 512, device="cuda", generator=g))
    y = fp8_linear(x, w)
    codes, scale = quantize_rows(x)
    ref = (codes.float() * scale) @ w.dequantize().t()
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)


@needs_cuda
@needs_fp8_gpu
def test_fp8_engine_graphs_match_eager_and_halve_the_linears():
    from tokenfactory.bench.gpu_check import SMALL, _prompts
    from tokenfactory.engine.sampling_params import SamplingParams
    from tokenfactory.models.llama import Linear

    prompts = _prompts(12, SMALL.vocab_size, seed=31)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    graphed = _engine("fp8")
    assert graphed.runner.graphs is not None and graphed.runner.graphs.graphs
    linears = [m for m in graphed.model.modules() if isinstance(m, Linear)]
    assert all(m.weight.dtype is torch.float8_e4m3fn for m in linears)
    a = [r.token_ids for r in graphed.generate(prompts, params)]
    del graphed
    eager = _engine("fp8", graphs=False)
    b = [r.token_ids for r in eager.generate(prompts, params)]
    assert a == b


@needs_cuda
def test_old_gpus_are_refused_at_load(monkeypatch):
    from tokenfactory.kernels.fp8_linear import Fp8UnsupportedError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))
    with pytest.raises(Fp8UnsupportedError, match=r"8\.9"):
        _engine("fp8")
