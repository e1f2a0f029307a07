"""One entry point from a path on disk to (config, weights, tokenizer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from tokenfactory.kernels.q4_linear import Q4Weight
from tokenfactory.kernels.q8_linear import Q8Weight
from tokenfactory.models.config import ModelConfig
from tokenfactory.models.embedded import embedded_model_path
from tokenfactory.models.errors import CorruptModelError, ModelNotFoundError
from tokenfactory.models.gguf_file import is_gguf_file, open_gguf
from tokenfactory.models.gguf_loader import (
    check_quantization,
    dequantized_nbytes,
    gguf_model_config,
    load_gguf_q4_weights,
    load_gguf_state_dict,
)
from tokenfactory.models.hf_loader import (
    hf_model_config,
    hf_weight_files,
    hf_weights_nbytes,
    load_hf_state_dict,
)
from tokenfactory.models.memory import ensure_fits
from tokenfactory.models.tokenizer import Tokenizer

ModelFormat = Literal["gguf", "hf"]


@dataclass
class LoadedModel:
    """Everything read from a model's files. `state_dict` uses Hugging Face names."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    source: Path
    format: ModelFormat
    # GGUF weights stored as Q4_1 (and the logits' weight if Q8_0), as stored (HF names), when
    # asked for: CPU decode steps read these
    q4_weights: dict[str, Q4Weight | Q8Weight] = field(default_factory=dict)


def load_model_files(
    path: str | Path | None = None,
    *,
    dtype: torch.dtype | None = None,
    check_memory: bool = True,
    q4_weights: bool = False,
) -> LoadedModel:
    """Load a GGUF file or a Hugging Face directory; None loads the embedded default model.

    GGUF weights are dequantized to float32; HF weights keep their stored dtype. `dtype`
    casts every tensor (one at a time, so peak memory stays near the result's size).
    `q4_weights`: also keep a GGUF's Q4_1 weights as stored (`LoadedModel.q4_weights`).
    """
    source = embedded_model_path() if path is None else Path(path).expanduser()
    if not source.exists():
        raise ModelNotFoundError(f"model not found: {source}")
    if source.is_dir():
        loaded = _load_hf(source, dtype, check_memory)
    elif is_gguf_file(source):
        loaded = _load_gguf(source, dtype, check_memory, q4_weights)
    else:
        raise CorruptModelError(
            f"{source} is neither a GGUF file nor a Hugging Face model directory "
            "(a GGUF file that is not one is corrupt or truncated)"
        )
    _sync_special_ids(loaded.config, loaded.tokenizer)
    return loaded


def _load_gguf(
    source: Path, dtype: torch.dtype | None, check_memory: bool, q4_weights: bool
) -> LoadedModel:
    f = open_gguf(source)
    config = gguf_model_config(f)
    check_quantization(f)
    tokenizer = Tokenizer.from_gguf_metadata(f.metadata)
    if check_memory:
        ensure_fits(dequantized_nbytes(f, dtype or torch.float32), str(source))
    state = load_gguf_state_dict(f, config, dtype or torch.float32)
    q4 = load_gguf_q4_weights(f, config) if q4_weights else {}
    return LoadedModel(config, state, tokenizer, source, "gguf", q4)


def _load_hf(source: Path, dtype: torch.dtype | None, check_memory: bool) -> LoadedModel:
    config = hf_model_config(source)
    tokenizer = Tokenizer.from_hf_dir(source)
    if check_memory:
        ensure_fits(hf_weights_nbytes(hf_weight_files(source), config, dtype), str(source))
    state = load_hf_state_dict(source, config, dtype)
    return LoadedModel(config, state, tokenizer, source, "hf")


def _sync_special_ids(config: ModelConfig, tokenizer: Tokenizer) -> None:
    """The tokenizer knows every end token; the config's list is what generation reads."""
    for token_id in tokenizer.eos_token_ids:
        if token_id not in config.eos_token_ids:
            config.eos_token_ids.append(token_id)
    if config.bos_token_id is None:
        config.bos_token_id = tokenizer.bos_token_id
