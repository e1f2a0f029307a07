"""GrammarCache: compile each distinct grammar once per engine, hand out fresh copies.

Compiling a schema costs ~1-10 ms (more for large ones), and a matcher's lexer states are
built lazily as masks are computed. Copies of one compiled matcher share those states, so the
requests of an application that sends the same schema again and again pay neither twice: on
the CPU VM, 64 copies made their first 48 masks ~2x faster than 64 fresh compiles.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import llguidance

from tokenfactory.engine.constraints.matcher import GrammarMatcher
from tokenfactory.engine.constraints.spec import GrammarSpec


class GrammarCache:
    def __init__(self, tokenizer: llguidance.LLTokenizer, max_entries: int = 128) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._compiled: OrderedDict[GrammarSpec, GrammarMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def matcher(self, spec: GrammarSpec) -> GrammarMatcher:
        """A matcher at the start of `spec`'s grammar; InvalidRequestError when it cannot be
        served (nothing is cached for it then)."""
        with self._lock:
            template = self._compiled.get(spec)
            if template is not None:
                self._compiled.move_to_end(spec)
                return template.copy()
        template = GrammarMatcher.compile(spec, self.tokenizer)  # GIL released while compiling
        with self._lock:
            self._compiled[spec] = template
            while len(self._compiled) > self.max_entries:
                self._compiled.popitem(last=False)
        return template.copy()

    def __len__(self) -> int:
        return len(self._compiled)
