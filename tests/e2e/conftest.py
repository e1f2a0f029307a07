"""The real embedded model, loaded once per test session and shared by engines."""

from __future__ import annotations

import pytest

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.engine import Engine
from tokenfactory.engine.model_setup import build_model
from tokenfactory.models.loader import LoadedModel, load_model_files


@pytest.fixture(scope="session")
def embedded_files() -> LoadedModel:
    return load_model_files(None, q4_weights=True)


@pytest.fixture(scope="session")
def make_engine(embedded_files: LoadedModel):
    """Build engines over one shared copy of the weights (per dtype); each gets its own cache."""
    models: dict[str, object] = {}

    def make(dtype: str = "auto", **overrides) -> Engine:
        config = EngineConfig(dtype=dtype, **{"num_kv_blocks": 2048, **overrides})
        if dtype not in models:
            model = build_model(embedded_files.config, config, embedded_files.state_dict)
            model.attach_q4_weights(embedded_files.q4_weights)  # as Engine.from_model_path does
            models[dtype] = model
        return Engine(models[dtype], embedded_files.tokenizer, config, model_name="smollm2")

    return make
