"""Speculative decoding: proposers guess a request's next tokens, the target model verifies
them all in one step, and every guess it would have made itself is kept (docs/speculation.md)."""
