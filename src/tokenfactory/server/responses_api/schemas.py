"""The request body of OpenAI's Responses API (`POST /v1/responses`), validated at the edge.

Scalars are checked here with the same bounds chat completions use; the `input` items and
`tools` stay plain dicts because each kind has its own shape, and `translate`
reads them one by one so that every refusal names the exact item (`input[3].content[0]`).
Unknown fields are accepted and ignored, as OpenAI's API does.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tokenfactory.server.schemas import INT64, Temperature

_COMMON = ConfigDict(extra="allow", allow_inf_nan=False, str_max_length=4_000_000)
# OpenAI's: at most 16 string pairs (`task_id` in it names the caller's task, as X-Task-Id).
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class TextConfig(BaseModel):
    model_config = _COMMON
    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ReasoningConfig(BaseModel):
    model_config = _COMMON
    effort: str | None = None
    summary: str | None = None


class ResponsesRequest(BaseModel):
    model_config = _COMMON
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=INT64)] | None = None
    temperature: Temperature | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    text: TextConfig | None = None
    service_tier: str | None = None
    metadata: Metadata | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    user: str | None = None
    safety_identifier: str | None = None
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = None
    truncation: str | None = None
    top_logprobs: int | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    max_tool_calls: int | None = None
