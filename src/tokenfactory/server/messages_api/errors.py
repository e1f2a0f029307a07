"""Errors in Anthropic's shape for `/v1/messages`: `{"type": "error", "error": {type, message}}`.

The same `APIError` the rest of the server raises, with the same HTTP status; only the body
differs. Anthropic's error has no `param`, so the parameter leads the message instead.
"""

from __future__ import annotations

import json
from typing import Any

from tokenfactory.server.errors import APIError

MESSAGES_PATH = "/v1/messages"

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def speaks_anthropic(path: str) -> bool:
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def error_type(err: APIError) -> str:
    if err.code == "insufficient_quota":
        return "billing_error"
    if err.code == "engine_error":  # one failed step, not a lack of capacity
        return "api_error"
    return _TYPE_BY_STATUS.get(
        err.status, "api_error" if err.status >= 500 else "invalid_request_error"
    )


def anthropic_body(err: APIError) -> dict[str, Any]:
    named = err.param is None or f"'{err.param}'" in err.message
    message = err.message if named else f"{err.param}: {err.message}"
    return {"type": "error", "error": {"type": error_type(err), "message": message}}


def anthropic_sse(err: APIError) -> bytes:
    """The error as a stream event, for a failure after the stream began."""
    return f"event: error\ndata: {json.dumps(anthropic_body(err))}\n\n".encode()
