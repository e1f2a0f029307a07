"""The `tier` scheduling policy, split by concern (see `policy`)."""
