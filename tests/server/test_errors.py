"""Every error a caller can cause, in OpenAI's body shape with the right status and headers."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.server.conftest import MODEL, start_server
from tokenfactory.billing import Billing
from tokenfactory.tiers import load_tiers

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "Hello"}]


def _post(server, body, key: str | None = "super", path="/v1/chat/completions", raw=None):
    headers = {"Authorization": f"Bearer {server.keys[key]}"} if key else {}
    if raw is not None:
        headers["content-type"] = "application/json"
        return httpx.post(server.base_url + path, content=raw, headers=headers, timeout=60)
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)


def _error(r: httpx.Response, status: int, code=None, param=None, type_=None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    if type_ is not None:
        assert err["type"] == type_
    return err


@pytest.mark.parametrize(
    "body,param",
    [
        ({"model": MODEL, "messages": MSG, "temperature": 5}, "temperature"),
        ({"model": MODEL, "messages": MSG, "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": MSG, "n": 2}, "n"),
        ({"model": MODEL, "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": MODEL, "messages": MSG, "top_logprobs": 50, "logprobs": True}, "top_logprobs"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL}, "messages"),
        ({"messages": MSG}, "model"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"model": MODEL, "messages": MSG, "service_tier": "platinum"}, "service_tier"),
        ({"model": MODEL, "messages": MSG, "stream_options": {"include_usage": True}},
         "stream_options"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, "messages[0].content[0]"),
        ({"model": MODEL, "messages": MSG, "response_format": {"type": "json_schema",
          "json_schema": {"name": "x", "schema": {"not": {}}}}}, "response_format"),
        ({"model": MODEL, "messages": MSG, "seed": 2**70}, "seed"),
    ],
)
def test_invalid_request_names_the_param(factory_server, body, param):
    _error(_post(factory_server, body), 400, param=param, type_="invalid_request_error")


def test_bad_json_and_bad_completion_prompts(factory_server):
    _error(_post(factory_server, None, raw=b"{not json"), 400)
    _error(_post(factory_server, None, raw=b"[1, 2]"), 400)
    garbage = _error(_post(factory_server, None, raw=b"\xff\xfe\x00", path="/v1/completions"),
                     400)
    assert "None" not in garbage["message"]
    p = "/v1/completions"
    _error(_post(factory_server, {"model": MODEL, "prompt": ""}, path=p), 400, param="prompt")
    _error(_post(factory_server, {"model": MODEL, "prompt": [10**9]}, path=p), 400, param="prompt")
    _error(_post(factory_server, {"model": MODEL, "prompt": ["a", "b"]}, path=p), 400,
           param="prompt")
    _error(_post(factory_server, {"model": MODEL, "prompt": "x", "echo": True}, path=p), 400,
           param="echo")


def test_context_length_exceeded(factory_server):
    long = [{"role": "user", "content": "word " * 9000}]
    _error(_post(factory_server, {"model": MODEL, "messages": long}), 400,
           code="context_length_exceeded")
    big = {"model": MODEL, "messages": MSG, "max_tokens": 100_000}
    _error(_post(factory_server, big), 400, code="context_length_exceeded", param="max_tokens")


def test_auth_errors(factory_server):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2}
    _error(_post(factory_server, body, key=None), 401, code="invalid_api_key")
    r = httpx.post(factory_server.base_url + "/v1/chat/completions", json=body,
                   headers={"Authorization": "Bearer tf-not-a-real-key-at-all-xxxxxxxxxxxx"})
    err = _error(r, 401, code="invalid_api_key")
    assert "tf-not-a-real-key" not in err["message"]  # the key is not echoed back
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=factory_server.base_url + "/v1", api_key="nope",
                      max_retries=0).models.list()


def test_tier_not_allowed_and_model_not_found(factory_server):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2, "service_tier": "super"}
    _error(_post(factory_server, body, key="free"), 403, code="tier_not_allowed",
           param="service_tier")
    with pytest.raises(openai.PermissionDeniedError):
        factory_server.openai("standard").chat.completions.create(
            model=MODEL, messages=MSG, max_tokens=2, service_tier="priority")
    with pytest.raises(openai.NotFoundError) as exc:
        factory_server.openai("free").chat.completions.create(
            model="gpt-9", messages=MSG, max_tokens=2)
    assert exc.value.body["code"] == "model_not_found"


def _billing(server) -> Billing:
    return Billing.open(load_tiers(preset="cpu"), None, server.data_dir)


def test_rate_limit_429_with_retry_after_and_headers(factory_server):
    billing = _billing(factory_server)
    _, raw = billing.create_key("limited", "standard", rpm=2)
    billing.close()
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2}
    headers = {"Authorization": f"Bearer {raw}"}
    url = factory_server.base_url + "/v1/chat/completions"
    ok = httpx.post(url, json=body, headers=headers, timeout=60)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    codes = [httpx.post(url, json=body, headers=headers, timeout=60) for _ in range(3)]
    limited = [r for r in codes if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    _error(limited[0], 429, code="rate_limit_exceeded")
    assert int(limited[0].headers["retry-after"]) >= 1
    assert "x-ratelimit-remaining-requests" in limited[0].headers
    client = openai.OpenAI(base_url=factory_server.base_url + "/v1", api_key=raw, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**body)


def test_budget_exhausted_is_insufficient_quota(factory_server):
    billing = _billing(factory_server)
    _, raw = billing.create_key("broke", "super", budget_micro_usd=100)
    billing.close()
    client = openai.OpenAI(base_url=factory_server.base_url + "/v1", api_key=raw, max_retries=0)
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=500,
                                       service_tier="super")
    assert exc.value.body["code"] == "insufficient_quota"


def test_unknown_route_and_method(factory_server):
    _error(httpx.get(factory_server.base_url + "/v1/nothing"), 404)
    _error(httpx.get(factory_server.base_url + "/v1/chat/completions"), 405)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory):
    """A server whose tiers file asks more than any CPU can give, and no queue at all."""
    d = tmp_path_factory.mktemp("strict")
    tiers = d / "tiers.toml"
    shipped = load_tiers(preset="cpu")
    lines = ['default_tier = "standard"']
    for t in shipped.tiers:
        lines += [f"[tiers.{t.name}]", 'output_usd_per_mtok = "1"']
    lines.append("[presets.cpu]")
    for t in shipped.tiers:
        speed = 100_000 if t.name == "super" else 0.01
        lines.append(f"{t.name} = {{ tokens_per_s = {speed}, ttft_s = 600 }}")
    tiers.write_text("\n".join(lines) + "\n")
    server = start_server(d, "--tiers", str(tiers), "--max-waiting", "0")
    yield server
    server.stop()


def test_tier_unavailable_and_auto_fallback(strict_server):
    tiers = httpx.get(strict_server.base_url + "/v1/tiers").json()["data"]
    sup = next(t for t in tiers if t["name"] == "super")
    assert sup["available"] is False and "tokens/s" in sup["reason"]
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2, "service_tier": "super"}
    _error(_post(strict_server, body), 400, code="tier_unavailable", param="service_tier")


def test_overloaded_is_503(strict_server):
    body = {"model": MODEL, "messages": MSG, "max_tokens": 2, "service_tier": "high"}
    r = _post(strict_server, body)
    _error(r, 503, code="overloaded")
    assert "retry-after" in r.headers
    # Counted like every other refusal, so /metrics (and the dashboard) see it.
    metrics = httpx.get(strict_server.base_url + "/metrics").text
    assert 'outcome="overloaded",tier="high"} 1.0' in metrics, metrics[:2000]
