"""Request bodies as OpenAI defines them (plus vLLM's extra sampling fields), validated once.

Pydantic lives only here, at the HTTP edge; the rest of the server works on the plain
`GenerationRequest` that `to_generation` builds. Unknown fields are accepted and ignored, as
OpenAI's own API does for fields it does not know yet.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tokenfactory.engine.sampling_params import MAX_LOGPROBS

INT64 = 2**63 - 1
_COMMON = ConfigDict(extra="allow", allow_inf_nan=False, str_max_length=4_000_000)


class StreamOptions(BaseModel):
    model_config = _COMMON
    include_usage: bool | None = False


class TextPart(BaseModel):
    model_config = _COMMON
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = _COMMON
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = _COMMON
    model: str
    max_tokens: Annotated[int, Field(ge=1, le=INT64)] | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = 1
    stop: str | list[str] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=INT64)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    # OpenAI's: <= 16 string pairs; "task_id" in it names the caller's task (as X-Task-Id)
    metadata: Annotated[
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
        Field(max_length=16),
    ] | None = None
    # vLLM's extras
    top_k: Annotated[int, Field(ge=-1, le=INT64)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    ignore_eos: bool | None = False
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return v


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=INT64)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
