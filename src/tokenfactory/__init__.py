"""tokenfactory: hardware in, tokens out, sold in speed tiers."""

__version__ = "0.1.0"
