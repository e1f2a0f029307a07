"""Server-sent events as the Responses and Messages APIs write them: each event's `type` is
also its SSE `event:` line, then its JSON as `data:`."""

from __future__ import annotations

import json
from typing import Any


def sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()
