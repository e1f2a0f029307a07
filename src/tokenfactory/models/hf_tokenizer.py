"""Reading a Hugging Face model directory's tokenizer files (no transformers involved).

- tokenizer.json: the whole tokenizer pipeline, loaded by `tokenizers` as is.
- tokenizer_config.json: special tokens by role and the chat template (a string, or a list of
  named templates); a separate chat_template.jinja, when present, wins, as in transformers.
- generation_config.json / config.json: the EOS ids generation stops at (often several).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend

from tokenfactory.models.errors import CorruptModelError

_ROLES = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass
class HFTokenizerFiles:
    backend: Backend
    special_tokens: dict[str, str] = field(default_factory=dict)  # role -> token text
    chat_template: str | None = None
    named_chat_templates: dict[str, str] = field(default_factory=dict)
    eos_token_ids: list[int] = field(default_factory=list)  # from generation/model config


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptModelError(f"{path} is corrupt or unreadable: {e}") from e
    if not isinstance(data, dict):
        raise CorruptModelError(f"{path} is corrupt: expected a JSON object")
    return data


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def _token_text(value: Any) -> str | None:
    # tokenizer_config stores a token as a string or as a serialized AddedToken dict.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _int_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def read_hf_tokenizer_files(directory: Path) -> HFTokenizerFiles:
    tokenizer_json = directory / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise CorruptModelError(
            f"{directory} has no tokenizer.json (only fast-tokenizer files are supported)"
        )
    try:
        backend = Backend.from_file(str(tokenizer_json))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception subclasses
        raise CorruptModelError(f"{tokenizer_json} is corrupt or unreadable: {e}") from e

    config = _optional_json(directory / "tokenizer_config.json")
    special = {role: t for role in _ROLES if (t := _token_text(config.get(role))) is not None}

    template, named = _chat_templates(config.get("chat_template"))
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")

    generation = _optional_json(directory / "generation_config.json")
    model_config = _optional_json(directory / "config.json")
    eos = _int_list(generation.get("eos_token_id")) + _int_list(model_config.get("eos_token_id"))
    return HFTokenizerFiles(
        backend=backend,
        special_tokens=special,
        chat_template=template,
        named_chat_templates=named,
        eos_token_ids=eos,
    )


def _chat_templates(value: Any) -> tuple[str | None, dict[str, str]]:
    """(default template, named templates) from tokenizer_config's `chat_template`."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, list):
        named = {
            str(t["name"]): str(t["template"])
            for t in value
            if isinstance(t, dict) and "name" in t and "template" in t
        }
        return named.get("default"), named
    return None, {}
