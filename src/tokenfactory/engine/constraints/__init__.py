"""Constrained decoding: a request's output is held to a grammar, token by token."""

from tokenfactory.engine.constraints.spec import GRAMMAR_KINDS, GrammarKind, GrammarSpec

__all__ = ["GRAMMAR_KINDS", "GrammarKind", "GrammarSpec"]
