"""The factory's HTTP face: an OpenAI-compatible API with tiers, keys, billing and metrics."""
