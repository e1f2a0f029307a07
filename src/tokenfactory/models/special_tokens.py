"""Which token ids end a generation.

Files declare one EOS id, but chat models end turns with another token (`<|im_end|>`,
`<|eot_id|>`) and may still emit the base model's end of text. Like llama.cpp, we treat every
special token with a known end-of-turn spelling as an end token too.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer as Backend

END_TOKEN_SPELLINGS = frozenset(
    {
        "</s>",
        "<|endoftext|>",
        "<|im_end|>",
        "<|end_of_text|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|return|>",
        "<|EOT|>",
        "<EOT>",
    }
)


def end_token_ids(declared: Iterable[int | None], backend: Backend) -> list[int]:
    """Declared EOS ids first (in order, deduplicated), then special tokens spelled like ends."""
    ids: list[int] = []
    for token_id in declared:
        if token_id is not None and int(token_id) not in ids:
            ids.append(int(token_id))
    for token_id, added in sorted(backend.get_added_tokens_decoder().items()):
        if added.special and added.content in END_TOKEN_SPELLINGS and token_id not in ids:
            ids.append(token_id)
    return ids
