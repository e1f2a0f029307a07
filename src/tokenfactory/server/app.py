"""The HTTP routes: OpenAI's chat, completions and Responses APIs, Anthropic's Messages API,
plus tiers, usage, health and metrics.

A generation request's whole life (admission, streaming, settling) is `chat_route`'s; the
routes here pick the API's shapers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenfactory.billing.errors import LedgerUnavailableError
from tokenfactory.server import errors
from tokenfactory.server.capacity import TierStatus
from tokenfactory.server.chat_route import run_chat, run_completion
from tokenfactory.server.completion_shapes import ChatCompletionShaper
from tokenfactory.server.dashboard import DashboardAccess, dashboard_router
from tokenfactory.server.errors import APIError
from tokenfactory.server.factory import Factory, remember_task_id_header
from tokenfactory.server.messages_api.errors import anthropic_body, speaks_anthropic
from tokenfactory.server.messages_api.route import count_tokens, create_message
from tokenfactory.server.messages_api.schemas import CountTokensRequest, MessagesRequest
from tokenfactory.server.responses_api.route import create_response
from tokenfactory.server.responses_api.schemas import ResponsesRequest
from tokenfactory.server.schemas import ChatCompletionRequest, CompletionRequest
from tokenfactory.tiers import OPENAI_ALIASES

log = logging.getLogger(__name__)


def create_app(factory: Factory, dashboard: DashboardAccess | None = None) -> FastAPI:
    app = FastAPI(
        title="tokenfactory",
        description="An OpenAI-compatible token factory with priced speed tiers.",
        version="0.1.0",
        lifespan=_lifespan(factory),
        # every API's route hands X-Task-Id to Factory.start this way
        dependencies=[Depends(remember_task_id_header)],
    )
    app.state.factory = factory
    _install_error_handlers(app)
    _document_served_models(app, factory.model_names)
    app.include_router(dashboard_router(factory, dashboard or DashboardAccess()))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        received_at = time.monotonic()
        shaper = ChatCompletionShaper()
        return await run_chat(factory, request, None, body, shaper, shaper, received_at=received_at)

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await run_completion(factory, request, body, time.monotonic())

    @app.post("/v1/responses", response_model=None)
    async def responses(body: ResponsesRequest, request: Request) -> Response:
        return await create_response(factory, request, body)

    @app.post("/v1/messages", response_model=None)
    async def messages(body: MessagesRequest, request: Request) -> Response:
        return await create_message(factory, request, body)

    @app.post("/v1/messages/count_tokens")
    async def messages_count_tokens(body: CountTokensRequest, request: Request) -> dict:
        return await count_tokens(factory, request, body)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        factory.authenticate(request.headers.get("authorization"))
        return {
            "object": "list",
            "data": [
                {
                    "id": name,
                    "object": "model",
                    "created": factory.started_at,
                    "owned_by": "tokenfactory",
                    "max_model_len": factory.engine.max_model_len,
                }
                for name in factory.model_names
            ],
        }

    @app.get("/v1/tiers")
    async def tiers() -> dict:
        body = _tiers_body(factory)
        body["step_model"] = await asyncio.to_thread(_step_model_body, factory)
        return body

    @app.get("/v1/usage")
    async def usage(request: Request, since: str | None = None, by: str = "day_tier") -> dict:
        key = factory.authenticate(request.headers.get("authorization"))
        since_dt = None
        if since is not None:
            try:
                since_dt = datetime.strptime(since, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                raise errors.invalid_request("since must be a date YYYY-MM-DD", "since") from None
        if by not in ("day_tier", "task"):
            raise errors.invalid_request("by must be day_tier or task", "by")
        rows = await asyncio.to_thread(
            factory.billing.usage, key_id=key.key_id, since=since_dt, by=by
        )
        data = [_usage_row(r) for r in rows]
        return {
            "object": "list",
            "key": key.prefix,
            "account": key.account,
            "data": data,
            "total_micro_usd": sum(r["amount_micro_usd"] for r in data),
        }

    @app.get("/health")
    async def health() -> dict:
        # Liveness only: the process answers HTTP, even with a dead engine (that is /ready's
        # 503 and the tokenfactory_engine_healthy gauge).
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        engine = factory.async_engine.health
        if engine.is_dead:
            return JSONResponse(_dead_body(factory), status_code=503)
        ok = factory.accepting and factory.async_engine.is_running
        body = {"status": "ready" if ok else "not ready", "model": factory.model_label}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data = factory.metrics.render(factory.refresh_gauges)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _dead_body(factory: Factory) -> dict:
    """/ready once the engine is dead: OpenAI's error shape, naming why, for whoever routes
    traffic or pages someone."""
    health = factory.async_engine.health
    assert health.dead_since is not None
    err = APIError(
        503,
        f"The model engine is dead: {health.reason} (last error: {health.last_error}). "
        + health.remedy,
        "server_error",
        "engine_unavailable",
    )
    return {
        **err.body(),
        "status": "dead",
        "model": factory.model_label,
        "dead_since": datetime.fromtimestamp(health.dead_since, UTC).isoformat(),
    }


def _document_served_models(app: FastAPI, names: list[str]) -> None:
    """Say in the OpenAPI schema which model names this server answers to."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            # Every request body that names a model (all APIs, token counting too).
            for body in schema.get("components", {}).get("schemas", {}).values():
                if "model" in body.get("properties", {}):
                    body["properties"]["model"]["enum"] = list(names)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _lifespan(factory: Factory):
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await factory.shutdown()

    return lifespan


# -- tiers and usage -----------------------------------------------------------------------------


def _tiers_body(factory: Factory) -> dict:
    cap = factory.capacity
    data = []
    aliases: dict[str, list[str]] = {}
    for alias, name in OPENAI_ALIASES.items():
        aliases.setdefault(name, []).append(alias)
    for tier in factory.catalog.tiers:
        status = factory.statuses[tier.name]
        d = tier.as_dict()
        d.update(
            available=status.available,
            reason=status.reason,
            max_users_at_promise=status.max_users_at_promise,
            openai_aliases=aliases.get(tier.name, []),
            speculation=_tier_speculation(factory, status),
        )
        if tier.name in factory.config.tier_pools:  # served by these engine replicas only
            d["replicas"] = list(factory.config.tier_pools[tier.name])
        data.append(d)
    return {
        "object": "list",
        "preset": factory.catalog.preset,
        "default_tier": factory.catalog.default_tier,
        "data": data,
        "capacity": {
            "model": cap.model,
            "device": cap.device,
            "machine": cap.machine,
            "measured_at": cap.measured_at,
            "cached": cap.cached,
            "recheck_step_s": cap.recheck_step_s,
            "ttft_prompt_tokens": cap.ttft_prompt_tokens,
            "idle_ttft_s": cap.ttft_s,
            "decode": [
                {
                    "batch": p.batch,
                    "step_s": p.step_s,
                    "tokens_per_s_per_user": p.tokens_per_s_per_user,
                    "tokens_per_s": p.tokens_per_s,
                }
                for p in cap.points
            ],
            "speculation": cap.speculation.to_dict() if cap.speculation else None,
        },
    }


def _tier_speculation(factory: Factory, status: TierStatus) -> dict | None:
    """How a tier uses speculative decoding here: None when the engine has no proposer."""
    engine = factory.engine
    cap = factory.capacity.speculation
    if engine.proposer is None:
        return None
    policy = engine.scheduler.policy.name
    # Under the tier policy only paying paced tiers draft; fcfs and priority draft for all.
    drafts = status.tier.output_price > 0 if policy == "tier" else True
    live = engine.scheduler.acceptance.rate
    probe = cap.acceptance if cap else None
    return {
        "proposer": engine.proposer.name,
        "drafts": drafts,
        "acceptance": live if live is not None else probe,  # lately, else the probe's
        "relies_on_speculation": status.relies_on_speculation,
        "probe_acceptance": probe,
        "probe_tokens_per_s_per_user": cap.best_speed if cap else None,
        "live_acceptance": live,
    }


def _step_model_body(factory: Factory) -> dict:
    """The step-time model fitted to the engine's recent steps: what a step costs right now
    (the scheduler's view; the probe above is the idle machine's)."""
    from tokenfactory.scheduling.step_model import StepTimeModel

    steps = factory.engine.stats.recent(512)
    prior = factory.engine.step_prior  # the probe's figures, as the scheduler starts from
    model = StepTimeModel.from_steps(steps, prior=prior)
    c = model.coefficients
    return {
        "policy": factory.engine.scheduler.policy.name,
        "prior": "probe" if prior is not None else "cpu_guess",
        "steps_observed": model.num_observed,
        "fitted": model.num_observed > 0,
        "base_s": c.base_s,
        "per_decode_s": c.per_decode_s,
        "per_prefill_token_s": c.per_prefill_token_s,
        "per_kv_token_s": c.per_kv_token_s,
        "prefill_step_s": c.prefill_step_s,
    }


def _usage_row(row) -> dict:
    d = row.to_dict() if hasattr(row, "to_dict") else dict(vars(row))
    return json.loads(json.dumps(d, default=str))


# -- errors --------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_json(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = _param_name(first.get("loc", ()))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            err = errors.invalid_request("We could not parse the JSON body of your request.")
        elif param is None:
            err = errors.invalid_request(f"The request body must be a JSON object: {msg}.")
        elif first.get("type") == "missing":
            err = errors.invalid_request(f"Missing required parameter: '{param}'.", param)
        else:
            err = errors.invalid_request(f"Invalid '{param}': {msg}.", param)
        return _error_json(request, err)

    @app.exception_handler(LedgerUnavailableError)
    async def ledger_down(request: Request, exc: LedgerUnavailableError) -> JSONResponse:
        # Any route that reads the ledger (usage, keys) while its database is unreachable.
        return _error_json(request, errors.ledger_unavailable(str(exc), exc.retry_after_s))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = APIError(exc.status_code, str(exc.detail), "invalid_request_error", code)
        return _error_json(request, err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        err = errors.server_error("The server had an error while processing your request.")
        return _error_json(request, err)


def _error_json(request: Request, err: APIError) -> JSONResponse:
    """The error in the shape of the API that was called: Anthropic's on /v1/messages."""
    body = anthropic_body(err) if speaks_anthropic(request.url.path) else err.body()
    return JSONResponse(body, status_code=err.status, headers=err.headers)


def _param_name(loc: tuple | list) -> str | None:
    parts = [p for p in loc if p != "body"]
    # pydantic adds the union member it tried ("str", "list[TextPart]"): not a field name
    name = ""
    for p in parts:
        if isinstance(p, int):
            name += f"[{p}]"
        elif isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")):
            continue
        else:
            name += ("." if name else "") + str(p)
    return name or None
