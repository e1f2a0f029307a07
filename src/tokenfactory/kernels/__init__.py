"""Native CPU kernels: C++ built with torch.utils.cpp_extension at first use and registered as
``torch.ops.tokenfactory`` operators (``native``), with PyTorch fallbacks."""

from tokenfactory.kernels.skinny import available, should_use, skinny_linear, uses_amx

__all__ = ["available", "should_use", "skinny_linear", "uses_amx"]
