"""Optional: fetch a model repository from the Hugging Face Hub.

Nothing else depends on this or on the network; `huggingface_hub` is not a dependency.
"""

from __future__ import annotations

from pathlib import Path

from tokenfactory.models.errors import ModelLoadError

# What the HF loader reads; skips duplicate weight formats (.bin, .pth, onnx, gguf).
DEFAULT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
)


def download_snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    allow_patterns: tuple[str, ...] | list[str] = DEFAULT_PATTERNS,
) -> Path:
    """Download (or reuse from cache) a repo snapshot; returns the local directory."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise ModelLoadError(
            "downloading from the Hugging Face Hub needs `pip install huggingface_hub`; "
            "or pass a local GGUF file or model directory"
        ) from e
    path = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
        allow_patterns=list(allow_patterns),
    )
    return Path(path)
