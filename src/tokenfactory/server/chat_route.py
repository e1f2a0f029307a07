"""Running one generation request end to end, for any API that speaks chat.

`run_chat` is the one entry point for chat-shaped APIs (chat completions, Responses,
Anthropic Messages): prepare the prompt, choose the tier, admit (reserve in the ledger),
wait out a shed check, then stream or answer whole through the API's shapers, and settle in
the ledger on every way out (finish, error, shutdown, client gone). `run_completion` does the
same for text completions.

No middleware: streaming responses go through `SSEResponse`, a plain ASGI response that
notices a client leaving and closes the generation at once, so it is aborted and billed for
exactly what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from tokenfactory.billing import ApiKey
from tokenfactory.engine.errors import EngineDeadError, EngineStepError
from tokenfactory.server import errors
from tokenfactory.server.chat_events import (
    BodyShaper,
    ChatContext,
    ChatResult,
    OutputParser,
    PlainText,
    StreamShaper,
    chat_finish_reason,
)
from tokenfactory.server.completion_shapes import TextCompletionShaper
from tokenfactory.server.errors import APIError
from tokenfactory.server.factory import Factory, Generation
from tokenfactory.server.prepare import PreparedRequest, prepare_chat, prepare_completion
from tokenfactory.server.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

LEDGER_CHAT_PREFIX = "chatcmpl-"  # the factory's own ids for chat requests


async def run_chat(
    factory: Factory,
    request: Request,
    key: ApiKey | None,
    chat: ChatCompletionRequest,
    stream_shaper: StreamShaper,
    body_shaper: BodyShaper,
    request_id_prefix: str = LEDGER_CHAT_PREFIX,
    *,
    received_at: float | None = None,
) -> Response:
    """Run a chat request for any API and answer in that API's shape.

    `key` None: authenticate here from the Authorization header. The id the client sees is
    `request_id_prefix` + the ledger id's random part (the default prefix gives the ledger id
    itself); the shapers get it, with the rest of the `ChatContext`, before any output."""
    received_at = time.monotonic() if received_at is None else received_at
    if key is None:
        key = factory.authenticate(request.headers.get("authorization"))
    factory.check_model(chat.model)
    engine = factory.engine
    config = engine.model_config  # its name and architecture say how the model writes calls
    prepared = prepare_chat(
        chat,
        engine.tokenizer,
        engine.max_model_len,
        getattr(config, "name", ""),
        getattr(config, "architecture", ""),
    )
    calling = prepared.tool_calling
    return await _run(
        factory,
        request,
        key,
        prepared,
        chat.model,
        received_at,
        stream_shaper if prepared.stream else None,
        body_shaper,
        calling.parser() if calling is not None else PlainText(),
        request_id_prefix,
    )


async def run_completion(
    factory: Factory, request: Request, body: CompletionRequest, received_at: float
) -> Response:
    """`/v1/completions`: a text prompt, no template, no tool calls."""
    key = factory.authenticate(request.headers.get("authorization"))
    factory.check_model(body.model)
    engine = factory.engine
    prepared = prepare_completion(
        body, engine.tokenizer, engine.max_model_len, engine.model_config.vocab_size
    )
    shaper = TextCompletionShaper()
    streamer = shaper if prepared.stream else None
    return await _run(
        factory, request, key, prepared, body.model, received_at, streamer, shaper, PlainText(), ""
    )


async def _run(
    factory: Factory,
    request: Request,
    key: ApiKey,
    prepared: PreparedRequest,
    model: str,
    received_at: float,
    stream_shaper: StreamShaper | None,
    body_shaper: BodyShaper,
    parser: OutputParser,
    request_id_prefix: str,
) -> Response:
    tier = factory.choose_tier(key, prepared.service_tier)
    gen = await factory.start(key, prepared, tier, received_at)
    context = ChatContext(
        request_id=_client_id(gen.request_id, request_id_prefix),
        model=model,
        created=int(time.time()),
        fingerprint=factory.fingerprint,
        tokenizer=factory.engine.tokenizer,
        service_tier=tier.name,
        include_usage=prepared.include_usage,
        logprobs=prepared.logprobs is not None,
        prompt_tokens=len(prepared.prompt_ids),
    )
    headers = factory.billing.rate_limit_headers(key)
    if tier.sheddable:
        # A sheddable request may be refused on arrival when capacity is gone; that must be
        # a 429, so wait for the engine's first word before choosing the response.
        await _first_output_or_shed(gen, request)
    if stream_shaper is not None:
        stream_shaper.start(context)
        return SSEResponse(
            _stream(gen, stream_shaper, parser, context, not isinstance(parser, PlainText)),
            on_disconnect=gen.abort,
            headers=headers,
            generation=gen,
        )
    body_shaper.start(context)
    return await _whole(gen, body_shaper, parser, context, request, headers)


def _client_id(ledger_id: str, prefix: str) -> str:
    if not prefix or ledger_id.startswith(prefix):
        return ledger_id
    return prefix + ledger_id.split("-", 1)[-1]


def _result(gen: Generation, parser: OutputParser, service_tier: str) -> ChatResult:
    assert gen.finish_reason is not None
    calls = parser.tool_calls
    return ChatResult(
        text=parser.text,
        tool_calls=calls,
        finish_reason=chat_finish_reason(gen.finish_reason, calls),
        usage=gen.usage,
        service_tier=service_tier,
        stop_sequence=gen.stop_sequence,
    )


def _engine_failure(exc: BaseException, partial: bool) -> APIError | None:
    """The client's error for a request the engine ended (None: not the engine's doing).
    `partial`: some of its tokens were already streamed."""
    if isinstance(exc, EngineDeadError):
        return errors.engine_unavailable(exc.health, partial)
    if isinstance(exc, EngineStepError):
        return errors.engine_error(partial)
    return None


async def _first_output_or_shed(gen: Generation, request: Request) -> None:
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    peek = asyncio.ensure_future(gen.peek())
    try:
        done, _ = await asyncio.wait({peek, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        peek.cancel()
        gen.settle("error", error="cancelled while queued")
        raise
    finally:
        watcher.cancel()
    if peek not in done:  # the client left while the request was queued
        peek.cancel()
        gen.client_disconnected = True
        gen.settle("disconnected", client_disconnected=True)
        await gen.recorded()
        raise errors.APIError(499, "client disconnected", "invalid_request_error")
    try:
        first = peek.result()
    except Exception as exc:  # the engine ended it before its first token
        gen.settle("error", error=str(exc))
        await gen.recorded()
        failure = _engine_failure(exc, partial=False)
        if failure is None:
            raise
        log.warning("request %s ended by the engine while queued: %s", gen.request_id, exc)
        raise failure from None
    if first is not None and first.finish_reason == "shed":
        await gen.close_stream()
        gen.settle("shed")
        await gen.recorded()
        retry = first.retry_after_s or 1.0
        raise errors.APIError(
            429,
            f"The {gen.tier.name} tier is shed under the current load: there is no capacity to "
            f"serve it now. Retry after about {retry:.0f} s, or use a paid tier.",
            "rate_limit_exceeded",
            "tier_overloaded",
            "service_tier",
            {"retry-after": str(max(1, int(retry + 0.999)))},
        )


async def _whole(
    gen: Generation,
    shaper: BodyShaper,
    parser: OutputParser,
    context: ChatContext,
    request: Request,
    headers: dict[str, str],
) -> Response:
    """Run a request to the end and answer in one body; a client leaving aborts it."""
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    outcome, error = "error", None
    try:
        async for out in _race(gen.outputs(), watcher):
            gen.delivered(out)
            if out.text:
                parser.feed(out.text)
        if watcher.done():
            outcome = "disconnected"
            gen.client_disconnected = True
            return Response(status_code=499)
        if gen.finish_reason is None:  # the stream ended without finishing: shutdown
            outcome, error = "shutdown", "the server shut down during the request"
            raise errors.overloaded("The server shut down before the request finished.", 1)
        parser.finish()
        outcome = gen.finish_reason
        tier = gen.settle(outcome)
        await gen.recorded()
        logprobs = gen.logprobs if context.logprobs else None
        return JSONResponse(shaper.body(_result(gen, parser, tier.name), logprobs), headers=headers)
    except APIError:
        raise
    except (EngineStepError, EngineDeadError) as exc:
        # The engine logged the failure; the client gets no text, so it pays for none.
        log.warning("request %s ended by the engine: %s", gen.request_id, exc)
        error = str(exc)
        gen.withhold()
        failure = _engine_failure(exc, partial=False)
        assert failure is not None
        raise failure from None
    except Exception as exc:
        log.exception("request %s failed", gen.request_id)
        error = str(exc)
        raise errors.server_error(
            "The engine failed while generating; nothing was billed beyond the tokens produced."
        ) from None
    finally:
        watcher.cancel()
        gen.settle(outcome, client_disconnected=gen.client_disconnected, error=error)
        with contextlib.suppress(asyncio.CancelledError):
            await gen.recorded()  # the answer (an error too) goes out once it is billed


async def _race(outputs: AsyncIterator, watcher: asyncio.Future) -> AsyncIterator:
    """Iterate `outputs` until it ends or `watcher` completes (the client went away)."""
    it = outputs.__aiter__()
    try:
        while True:
            nxt = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({nxt, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if nxt not in done:
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await nxt
                return
            try:
                yield nxt.result()
            except StopAsyncIteration:
                return
    finally:
        await it.aclose()  # type: ignore[attr-defined]


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _stream(
    gen: Generation,
    shaper: StreamShaper,
    parser: OutputParser,
    context: ChatContext,
    quiet: bool,
) -> AsyncIterator[bytes]:
    """SSE chunks for one request; settles on every way out. `quiet`: an engine step whose
    text the parser holds back (a call being read) sends nothing, unless it has logprobs."""
    outcome, error = "error", None
    try:
        for chunk in shaper.opening():
            yield chunk
        async for out in gen.outputs():
            if out.token_ids or out.text:
                lp = out.logprobs if context.logprobs else None
                if context.logprobs and lp is None:
                    lp = []
                events = parser.feed(out.text)
                if events or lp is not None or not quiet:
                    for chunk in shaper.events(events, lp):
                        yield chunk
            gen.delivered(out)  # the chunks were taken by the transport
        if gen.finish_reason is None:
            outcome, error = "shutdown", "the server shut down during the request"
            yield shaper.failure(
                errors.overloaded("The server shut down before the request finished.")
            )
            return
        tail = parser.finish()
        if tail:
            for chunk in shaper.events(tail, [] if context.logprobs else None):
                yield chunk
        outcome = gen.finish_reason
        tier = gen.settle(outcome)
        await gen.recorded()
        for chunk in shaper.closing(_result(gen, parser, tier.name)):
            yield chunk
    except (GeneratorExit, asyncio.CancelledError):
        # Closed by SSEResponse: the client left (it marks that first), or shutdown cancelled it.
        outcome = "disconnected" if gen.client_disconnected else "shutdown"
        raise
    except (EngineStepError, EngineDeadError) as exc:
        log.warning("stream %s ended by the engine: %s", gen.request_id, exc)
        error = str(exc)
        failure = _engine_failure(exc, partial=gen.completion_tokens > 0)
        assert failure is not None
        gen.settle(outcome, client_disconnected=gen.client_disconnected, error=error)
        await gen.recorded()
        yield shaper.failure(failure)
    except Exception as exc:
        log.exception("stream %s failed", gen.request_id)
        error = str(exc)
        gen.settle(outcome, client_disconnected=gen.client_disconnected, error=error)
        await gen.recorded()
        yield shaper.failure(errors.server_error("The engine failed while generating."))
    finally:
        gen.settle(outcome, client_disconnected=gen.client_disconnected, error=error)


class SSEResponse(Response):
    """A server-sent-events response that stops generating the moment the client leaves."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        on_disconnect: Callable[[], None],
        headers: dict[str, str] | None = None,
        generation: Generation | None = None,
    ):
        super().__init__(content=None, status_code=200, headers=headers)
        self.raw_headers = [
            (k, v) for k, v in self.raw_headers if k not in (b"content-length",)
        ] + [
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"content-type", b"text/event-stream; charset=utf-8"),
        ]
        self.body_iterator = body
        self.on_disconnect = on_disconnect
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            await _wait_disconnect(receive)
            gone = True
            if self.generation is not None:  # before the cancel reaches the generator
                self.generation.client_disconnected = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone:
                raise
            self._mark_gone()
        except OSError:  # the transport broke while sending
            self._mark_gone()
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]

    def _mark_gone(self) -> None:
        if self.generation is not None:
            self.generation.client_disconnected = True
        self.on_disconnect()
