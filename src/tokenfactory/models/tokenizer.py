"""Tokenizer: text <-> ids, chat templates and streaming decode, built on `tokenizers` alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from tokenfactory.models.chat_template import CHATML_TEMPLATE, render_chat
from tokenfactory.models.detokenizer import IncrementalDetokenizer
from tokenfactory.models.gguf_tokenizer import gguf_backend
from tokenfactory.models.hf_tokenizer import HFTokenizerFiles, read_hf_tokenizer_files
from tokenfactory.models.special_tokens import end_token_ids


class Tokenizer:
    """A model's tokenizer.

    `encode` treats special tokens written in the text (e.g. `<|im_start|>`) as single tokens;
    `encode(text, add_special_tokens=True)` adds BOS/EOS exactly where the model's files say to
    (so callers never prepend `bos_token_id` themselves). `chat_template` is the model's own
    Jinja template, or None (then `apply_chat_template` uses ChatML).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Sequence[int] = (),
        pad_token_id: int | None = None,
        unk_token_id: int | None = None,
        chat_template: str | None = None,
        named_chat_templates: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.bos_token_id = bos_token_id
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.chat_template = chat_template
        self.named_chat_templates = dict(named_chat_templates or {})

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, meta: Mapping[str, Any]) -> Tokenizer:
        meta = dict(meta)
        backend = gguf_backend(meta)
        named = {
            key.removeprefix("tokenizer.chat_template."): str(value)
            for key, value in meta.items()
            if key.startswith("tokenizer.chat_template.")
        }
        declared = [
            meta.get("tokenizer.ggml.eos_token_id"),
            meta.get("tokenizer.ggml.eot_token_id"),
            meta.get("tokenizer.ggml.eom_token_id"),
        ]
        return cls(
            backend,
            bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
            eos_token_ids=end_token_ids(declared, backend),
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
            unk_token_id=meta.get("tokenizer.ggml.unknown_token_id"),
            chat_template=meta.get("tokenizer.chat_template") or named.get("default"),
            named_chat_templates=named,
        )

    @classmethod
    def from_hf_dir(cls, path: str | Path) -> Tokenizer:
        files = read_hf_tokenizer_files(Path(path))
        return cls.from_hf_files(files)

    @classmethod
    def from_hf_files(cls, files: HFTokenizerFiles) -> Tokenizer:
        backend = files.backend
        ids = {name: _token_id(backend, tok) for name, tok in files.special_tokens.items()}
        declared = [ids.get("eos_token"), *files.eos_token_ids]
        return cls(
            backend,
            # Only tokenizer_config's bos_token: Qwen's config.json names a BOS id that is
            # never added, and chat templates must see no bos_token for it (as transformers).
            bos_token_id=ids.get("bos_token"),
            eos_token_ids=end_token_ids(declared, backend),
            pad_token_id=ids.get("pad_token"),
            unk_token_id=ids.get("unk_token"),
            chat_template=files.chat_template,
            named_chat_templates=files.named_chat_templates,
        )

    # -- vocabulary ---------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def _token_text(self, token_id: int | None) -> str | None:
        return None if token_id is None else self.backend.id_to_token(token_id)

    @property
    def special_tokens(self) -> dict[str, str]:
        """Special tokens by role, as chat templates see them (`bos_token`, `eos_token`, ...)."""
        roles = {
            "bos_token": self.bos_token_id,
            "eos_token": self.eos_token_ids[0] if self.eos_token_ids else None,
            "unk_token": self.unk_token_id,
            "pad_token": self.pad_token_id,
        }
        out = {}
        for role, token_id in roles.items():
            text = self._token_text(token_id)
            if text is not None:
                out[role] = text
        return out

    # -- text <-> ids -------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def detokenizer(
        self, prompt_ids: Sequence[int] | None = None, skip_special_tokens: bool = True
    ) -> IncrementalDetokenizer:
        def decode(ids: Sequence[int]) -> str:
            return self.decode(ids, skip_special_tokens=skip_special_tokens)

        return IncrementalDetokenizer(decode, prompt_ids)

    # -- chat -----------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation as the model's prompt text (not tokenized)."""
        template = self.chat_template
        if tools is not None and "tool_use" in self.named_chat_templates:
            template = self.named_chat_templates["tool_use"]
        return render_chat(
            template or CHATML_TEMPLATE,
            messages,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
            special_tokens=self.special_tokens,
            **kwargs,
        )


def _token_id(backend: Backend, token: str | None) -> int | None:
    return None if token is None else backend.token_to_id(token)
