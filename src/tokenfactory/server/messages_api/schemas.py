"""The request body of Anthropic's Messages API (`POST /v1/messages`), validated at the edge.

Scalars carry Anthropic's bounds (temperature 0-1, max_tokens required); content blocks and
tools stay plain dicts for `translate`, which reads them one by one so that each
refusal names the exact block (`messages[2].content[0]`). Unknown fields are ignored.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from tokenfactory.server.schemas import INT64

_COMMON = ConfigDict(extra="allow", allow_inf_nan=False, str_max_length=4_000_000)


class CountTokensRequest(BaseModel):
    """What `/v1/messages/count_tokens` reads: the prompt side of a Messages request."""

    model_config = _COMMON
    model: str
    messages: Annotated[list[dict[str, Any]], Field(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None
    output_config: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: Annotated[int, Field(ge=1, le=INT64)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0, le=INT64)] | None = None
    stream: bool | None = False
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    container: str | dict[str, Any] | None = None
