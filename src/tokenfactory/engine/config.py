"""EngineConfig: one dataclass of knobs that flows from the CLI down to every engine part."""

from __future__ import annotations

from dataclasses import dataclass

QUANTIZATIONS = (None, "fp8")


@dataclass
class EngineConfig:
    """Engine knobs. Defaults suit the embedded model on a small CPU."""

    block_size: int = 16  # tokens per KV block
    # KV cache size: an explicit block count wins, then a byte budget, then a share of free memory.
    num_kv_blocks: int | None = None
    kv_cache_bytes: int | None = None
    kv_cache_memory_fraction: float = 0.1
    max_num_seqs: int = 256  # sequences in one step
    max_num_batched_tokens: int = 2048  # tokens (prefill + decode) in one step
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's own context length
    policy: str = "fcfs"
    device: str = "cpu"
    dtype: str = "auto"  # "auto" | "bfloat16" | "float32" | "float16"
    num_threads: int | None = None  # None: every core
    seed: int = 0  # for random weights and unseeded sampling
    # CPU decode steps read a GGUF's Q4_1 layer weights as stored (~2.7x fewer bytes than bf16,
    # int8 activations as llama.cpp) for as many rows as pays here (kernels.q4_linear.reads_q4).
    q4_decode: bool = True
    # Such decode steps run every decoder layer in one native call (engine.cpu_decode_stack):
    # the same kernels and results as the model's forward, without its per-op Python.
    cpu_decode_stack: bool = True
    # GPU fast path (docs/engine.md). "auto": Triton kernels on CUDA when Triton imports,
    # else the portable torch ops; "triton" on CPU needs TRITON_INTERPRET=1 (tests only).
    attention_backend: str = "auto"  # "auto" | "torch" | "triton"
    cuda_graphs: bool = True  # capture decode steps per batch-size bucket (CUDA + Triton)
    cuda_graph_max_batch: int = 512  # largest captured bucket (also capped by max_num_seqs)
    # Bucketed decode over static input buffers. None: wherever CUDA graphs are captured;
    # True elsewhere runs the same buffers and padding without capture (CPU tests).
    static_decode: bool | None = None
    # On CUDA, the KV cache takes this share of the memory free after the weights, less a
    # reserve for activations, logits and graphs (kv_cache_memory_fraction is for CPUs).
    gpu_memory_utilization: float = 0.9
    # Speculative decoding (docs/speculation.md): None, "ngram" (prompt lookup) or "draft"
    # (a smaller model with the same tokenizer, `draft_model`). The scheduling policy picks
    # each step how many of at most `num_speculative_tokens` draft tokens a request verifies.
    speculation: str | None = None
    num_speculative_tokens: int = 4
    draft_model: str | None = None  # a GGUF file or Hugging Face directory, like --model
    # Asynchronous scheduling (docs/engine.md): plan and queue the next step before this one's
    # tokens reach the host, so on a GPU the host's work overlaps the device's. Not with
    # speculation (a draft's accepted count is needed to plan on).
    async_scheduling: bool = False
    # Weight quantization at load (docs/engine.md): None keeps the dtype's weights; "fp8" stores
    # the layer linears (and an untied lm_head) as float8 e4m3 with per-channel scales.
    quantization: str | None = None

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be at least 1")
        if self.max_num_seqs < 1:
            raise ValueError("max_num_seqs must be at least 1")
        if self.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be at least 1")
        if not 0.0 < self.kv_cache_memory_fraction <= 0.95:
            raise ValueError("kv_cache_memory_fraction must be in (0, 0.95]")
        if not 0.0 < self.gpu_memory_utilization <= 0.98:
            raise ValueError("gpu_memory_utilization must be in (0, 0.98]")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError("attention_backend must be auto, torch or triton")
        if self.cuda_graph_max_batch < 1:
            raise ValueError("cuda_graph_max_batch must be at least 1")
        if self.speculation not in (None, "ngram", "draft"):
            raise ValueError("speculation must be ngram or draft (or None: off)")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError("num_speculative_tokens must be in [1, 16]")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError("quantization must be fp8 (or None: the dtype's weights)")
        if self.async_scheduling and self.speculation is not None:
            raise ValueError("async_scheduling does not combine with speculation yet")
        if self.speculation == "draft" and not self.draft_model:
            raise ValueError("speculation='draft' needs draft_model (a model path)")
