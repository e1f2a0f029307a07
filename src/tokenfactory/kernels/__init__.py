"""Native CPU kernels (plain C, built with the system gcc at first use, called via ctypes)."""

from tokenfactory.kernels.skinny import available, should_use, skinny_linear, uses_amx

__all__ = ["available", "should_use", "skinny_linear", "uses_amx"]
