"""One exception type per failure a caller can cause, mapped once to OpenAI's error body.

OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status that
the SDK maps to its exception classes (400 BadRequestError, 401 AuthenticationError, 403
PermissionDeniedError, 404 NotFoundError, 429 RateLimitError, 503 InternalServerError).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tokenfactory.engine.health import EngineHealth


@dataclass
class APIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def sse_event(self) -> bytes:
        """The error as a server-sent event, for failures after a stream has begun."""
        return f"data: {json.dumps(self.body())}\n\n".encode()


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request_error", code, param)


def context_length_exceeded(message: str, param: str | None = "messages") -> APIError:
    return APIError(400, message, "invalid_request_error", "context_length_exceeded", param)


def invalid_api_key(message: str) -> APIError:
    return APIError(401, message, "invalid_request_error", "invalid_api_key")


def tier_not_allowed(tier: str, allowed: list[str]) -> APIError:
    return APIError(
        403,
        f"This API key may not use service_tier {tier!r}; it may use: {', '.join(allowed)}.",
        "permission_error",
        "tier_not_allowed",
        "service_tier",
    )


def tier_unavailable(tier: str, reason: str) -> APIError:
    return APIError(
        400,
        f"service_tier {tier!r} is not open on this hardware: {reason} See GET /v1/tiers.",
        "invalid_request_error",
        "tier_unavailable",
        "service_tier",
    )


def model_not_found(model: str, served: list[str]) -> APIError:
    return APIError(
        404,
        f"The model {model!r} does not exist. This server serves: {', '.join(served)}.",
        "invalid_request_error",
        "model_not_found",
        "model",
    )


def rate_limited(message: str, retry_after_s: float, headers: dict[str, str]) -> APIError:
    h = dict(headers)
    h["retry-after"] = str(max(1, int(retry_after_s + 0.999)))
    return APIError(429, message, "rate_limit_exceeded", "rate_limit_exceeded", None, h)


def insufficient_quota(message: str) -> APIError:
    return APIError(429, message, "insufficient_quota", "insufficient_quota")


def overloaded(message: str, retry_after_s: float | None = None) -> APIError:
    headers = {"retry-after": str(max(1, int(retry_after_s + 0.999)))} if retry_after_s else {}
    return APIError(503, message, "server_error", "overloaded", None, headers)


def ledger_unavailable(message: str, retry_after_s: float) -> APIError:
    """The billing database cannot be reached: refused before anything ran or was billed."""
    headers = {"retry-after": str(max(1, int(retry_after_s + 0.999)))}
    return APIError(503, message, "server_error", "ledger_unavailable", None, headers)


def server_error(message: str) -> APIError:
    return APIError(500, message, "server_error", "internal_error")


def _billed(partial: bool) -> str:
    if partial:
        return "You are billed only for the tokens you received."
    return "Nothing was billed for this request."


def engine_unavailable(health: EngineHealth, partial: bool = False) -> APIError:
    """The engine is dead (see `EngineHealth`): nothing here can serve until it is back.
    `partial`: the request had streamed some tokens before it was ended."""
    reason = health.reason or "it stopped"
    return APIError(
        503,
        f"The model engine on this server is unavailable ({reason}) and accepts no requests "
        f"{health.until}. {_billed(partial)} Retry shortly or on another server.",
        "server_error",
        "engine_unavailable",
    )


def engine_error(partial: bool = False) -> APIError:
    """One engine step failed while this request ran; the engine itself may still serve."""
    return APIError(
        500,
        "The model engine failed while generating this request, which was ended. "
        f"{_billed(partial)} Retry the request.",
        "server_error",
        "engine_error",
    )
