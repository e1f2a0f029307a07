"""`POST /v1/messages`: Anthropic's Messages API over the same engine, tiers and ledger as chat.

Authentication takes the key from `x-api-key` (Anthropic's header) or `Authorization:
Bearer`; `anthropic-version` is accepted whatever its value. The request is read as a
chat-completions request (`translate`) and run by `run_chat`, so admission,
reservation, tier choice, shedding and settlement are exactly those of chat completions.
Errors leave in Anthropic's shape (app.py's handlers ask `speaks_anthropic`).
`/v1/messages/count_tokens` counts a request's prompt without running it.
"""

from __future__ import annotations

import time

from fastapi import Request
from fastapi.responses import Response

from tokenfactory.billing import ApiKey
from tokenfactory.server import errors
from tokenfactory.server.chat_route import run_chat
from tokenfactory.server.errors import APIError
from tokenfactory.server.factory import Factory
from tokenfactory.server.messages_api.schemas import CountTokensRequest, MessagesRequest
from tokenfactory.server.messages_api.shape import MessagesBodyShaper
from tokenfactory.server.messages_api.stream import MessagesStreamShaper
from tokenfactory.server.messages_api.translate import rename_param, translate
from tokenfactory.server.prepare import prepare_chat

MESSAGE_ID_PREFIX = "msg_"


def authenticate(factory: Factory, request: Request) -> ApiKey:
    raw = request.headers.get("x-api-key", "").strip()
    if raw:
        return factory.authenticate(f"Bearer {raw}")
    if request.headers.get("authorization"):
        return factory.authenticate(request.headers["authorization"])
    raise errors.invalid_api_key(
        "You didn't provide an API key. Send it in the 'x-api-key' header "
        "(or as 'Authorization: Bearer <key>')."
    )


async def create_message(factory: Factory, request: Request, body: MessagesRequest) -> Response:
    received_at = time.monotonic()
    key = authenticate(factory, request)
    chat = translate(body)
    try:
        return await run_chat(
            factory,
            request,
            key,
            chat,
            MessagesStreamShaper(),
            MessagesBodyShaper(),
            MESSAGE_ID_PREFIX,
            received_at=received_at,
        )
    except APIError as err:
        raise rename_param(err) from None


async def count_tokens(factory: Factory, request: Request, body: CountTokensRequest) -> dict:
    """The prompt's token count as the model would read it (template, tools and all); free,
    and nothing runs on the engine."""
    authenticate(factory, request)
    factory.check_model(body.model)
    as_message = MessagesRequest.model_validate({**body.model_dump(), "max_tokens": 1})
    engine = factory.engine
    config = engine.model_config  # as run_chat renders: the model's way of writing calls
    try:
        prepared = prepare_chat(
            translate(as_message),
            engine.tokenizer,
            engine.max_model_len,
            getattr(config, "name", ""),
            getattr(config, "architecture", ""),
        )
    except APIError as err:
        raise rename_param(err) from None
    return {"input_tokens": len(prepared.prompt_ids)}
