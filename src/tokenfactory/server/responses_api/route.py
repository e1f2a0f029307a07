"""`POST /v1/responses`: OpenAI's Responses API over the same engine, tiers and ledger as chat.

The request is read as a chat-completions request (`translate`) and run by
`run_chat`, so admission, reservation, tier choice, shedding and settlement are exactly
those of `/v1/chat/completions`; only the shapes differ. Nothing is stored.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from tokenfactory.server.chat_route import run_chat
from tokenfactory.server.errors import APIError
from tokenfactory.server.factory import Factory
from tokenfactory.server.responses_api.schemas import ResponsesRequest
from tokenfactory.server.responses_api.shape import ResponsesBodyShaper
from tokenfactory.server.responses_api.stream import ResponsesStreamShaper
from tokenfactory.server.responses_api.translate import rename_param, translate

RESPONSE_ID_PREFIX = "resp_"


async def create_response(factory: Factory, request: Request, body: ResponsesRequest) -> Response:
    received_at = time.monotonic()
    key = factory.authenticate(request.headers.get("authorization"))
    call = translate(body)
    try:
        return await run_chat(
            factory,
            request,
            key,
            call.chat,
            ResponsesStreamShaper(call.echo, time.time),
            ResponsesBodyShaper(call.echo, time.time),
            RESPONSE_ID_PREFIX,
            received_at=received_at,
        )
    except APIError as err:
        raise rename_param(err) from None
