"""A tokenizer for server tests with a fake engine: one id per character, no model files."""

from __future__ import annotations


class FakeTokenizer:
    eos_token_ids: list[int] = []

    def apply_chat_template(self, messages, add_generation_prompt=True, tools=None) -> str:
        return " ".join(str(m.get("content", "")) for m in messages)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + ord(c) % 500 for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "x" * len(ids)
