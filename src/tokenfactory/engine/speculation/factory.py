"""The proposer an engine's configuration asks for."""

from __future__ import annotations

from tokenfactory.engine.config import EngineConfig
from tokenfactory.engine.speculation.proposer import Proposer
from tokenfactory.models.llama import LlamaForCausalLM


def make_proposer(
    config: EngineConfig, target: LlamaForCausalLM, num_blocks: int
) -> Proposer | None:
    """None when speculation is off. A draft model is loaded like the target (a GGUF file
    or a Hugging Face directory) on the same device, with as many KV blocks."""
    if config.speculation is None:
        return None
    if config.speculation == "ngram":
        from tokenfactory.engine.speculation.ngram import NgramProposer

        return NgramProposer()
    from tokenfactory.engine.model_setup import build_model, fp8_calibration_ids
    from tokenfactory.engine.speculation.draft_model import DraftModelProposer
    from tokenfactory.models.loader import load_model_files

    assert config.draft_model is not None  # EngineConfig checks it
    q4 = config.q4_decode and target.device.type == "cpu"
    loaded = load_model_files(config.draft_model, q4_weights=q4)
    draft = build_model(
        loaded.config,
        config,
        state_dict=loaded.state_dict,
        calibration_ids=fp8_calibration_ids(config, loaded.tokenizer),
    )
    if q4:
        draft.attach_q4_weights(loaded.q4_weights)
    return DraftModelProposer(draft, config, num_blocks, target.config.vocab_size)
