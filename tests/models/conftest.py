"""Shared, session-scoped fixtures: the embedded model is parsed once per test run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfactory.models.embedded import embedded_model_path
from tokenfactory.models.gguf_file import GGUFFile, open_gguf
from tokenfactory.models.loader import LoadedModel, load_model_files
from tokenfactory.models.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    return embedded_model_path()


@pytest.fixture(scope="session")
def embedded_gguf(embedded_path: Path) -> GGUFFile:
    return open_gguf(embedded_path)


@pytest.fixture(scope="session")
def tokenizer(embedded_gguf: GGUFFile) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(embedded_gguf.metadata)


@pytest.fixture(scope="session")
def embedded_model() -> LoadedModel:
    return load_model_files(None, q4_weights=True)


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(embedded_path: Path):  # noqa: ANN201 - transformers type, test-only
    """transformers' own tokenizer for the embedded GGUF (the reference)."""
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(
        str(embedded_path.parent), gguf_file=embedded_path.name
    )
