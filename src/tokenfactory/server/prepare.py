"""Turn a validated OpenAI request into what the engine runs: prompt token ids and sampling.

Everything a caller can get wrong that pydantic cannot see (unsupported options, non-text
content parts, a prompt too long for the context window) is refused here with a 400 that
names the parameter, before any money is reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from tokenfactory.engine.constraints.spec import GrammarSpec
from tokenfactory.engine.errors import InvalidRequestError
from tokenfactory.engine.sampling_params import SamplingParams
from tokenfactory.models.tokenizer import Tokenizer
from tokenfactory.server.errors import context_length_exceeded, invalid_request
from tokenfactory.server.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from tokenfactory.server.structured_output import response_format_grammar
from tokenfactory.server.tool_calls.setup import ToolCalling, prepare_tools


@dataclass
class PreparedRequest:
    kind: str  # "chat" or "text"
    prompt_ids: list[int]
    params: SamplingParams
    max_completion_tokens: int  # the most it can produce: what the budget reserves
    stream: bool
    include_usage: bool
    logprobs: int | None  # top-k alternatives wanted, None = no logprobs
    service_tier: str | None
    task_id: str | None = None  # metadata.task_id as sent (Factory.start checks it)
    # The client's prompt_cache_key: requests sharing one share a prompt prefix, so a
    # fleet sends them to the same replica (where that prefix is cached).
    cache_key: str | None = None
    tool_calling: ToolCalling | None = None  # the reply is read for tool calls


def prepare_chat(
    req: ChatCompletionRequest,
    tokenizer: Tokenizer | None,
    max_model_len: int,
    model_name: str = "",
    architecture: str = "",
) -> PreparedRequest:
    """`model_name` and `architecture` help choose how the model writes tool calls."""
    if tokenizer is None:
        raise invalid_request("this model has no tokenizer or chat template", "messages")
    grammar = response_format_grammar(req.response_format)
    messages = [_message_dict(i, m) for i, m in enumerate(req.messages)]
    tooling = prepare_tools(
        req.tools, req.tool_choice, req.parallel_tool_calls, messages, tokenizer, model_name,
        architecture,
    )
    grammar = tooling.grammar or grammar  # forced calls: the reply is calls, not the format
    try:
        text = tokenizer.apply_chat_template(
            tooling.prompt.messages, add_generation_prompt=True, tools=tooling.prompt.tools
        )
    except Exception as exc:  # a template error is about the caller's messages
        raise invalid_request(f"the messages cannot be rendered: {exc}", "messages") from None
    ids = tokenizer.encode(text)
    logprobs = None
    if req.logprobs:
        logprobs = req.top_logprobs or 0
    elif req.top_logprobs is not None:
        raise invalid_request("top_logprobs needs logprobs set to true", "top_logprobs")
    max_tokens = req.max_completion_tokens or req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
    prepared = _finish(
        req, "chat", ids, max_tokens, param, logprobs, max_model_len, "messages", grammar
    )
    prepared.tool_calling = tooling.calling
    return prepared


def prepare_completion(
    req: CompletionRequest, tokenizer: Tokenizer | None, max_model_len: int, vocab_size: int
) -> PreparedRequest:
    if req.echo:
        raise invalid_request("echo is not supported by this server", "echo")
    if req.suffix:
        raise invalid_request("suffix is not supported by this server", "suffix")
    if req.best_of not in (None, 1):
        raise invalid_request("only best_of=1 is supported", "best_of")
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise invalid_request("only one prompt per request is supported", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if tokenizer is None:
            raise invalid_request("this model has no tokenizer: pass token ids", "prompt")
        ids = tokenizer.encode(prompt)
    else:
        ids = list(cast(list[int], prompt))  # the schema leaves only token ids here
        if any(t < 0 or t >= vocab_size for t in ids):
            raise invalid_request(f"prompt token ids must be in [0, {vocab_size})", "prompt")
    if not ids:
        raise invalid_request("the prompt is empty", "prompt")
    return _finish(
        req, "text", ids, req.max_tokens, "max_tokens", req.logprobs, max_model_len, "prompt"
    )


def _finish(
    req: SamplingFields,
    kind: str,
    ids: list[int],
    max_tokens: int | None,
    max_param: str,
    logprobs: int | None,
    max_model_len: int,
    prompt_param: str,
    grammar: GrammarSpec | None = None,
) -> PreparedRequest:
    if req.n not in (None, 1):
        raise invalid_request("only n=1 is supported", "n")
    if req.logit_bias:
        raise invalid_request("logit_bias is not supported by this server", "logit_bias")
    n = len(ids)
    room = max_model_len - n
    if room < 1:
        raise context_length_exceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {n} tokens, leaving no room for the completion.",
            prompt_param,
        )
    if max_tokens is not None and max_tokens > room:
        raise context_length_exceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {n + max_tokens} tokens ({n} in the prompt, {max_tokens} for the "
            "completion). Please reduce the prompt or the completion length.",
            max_param,
        )
    try:
        params = SamplingParams(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0,
            min_p=req.min_p or 0.0,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0,
            max_tokens=max_tokens if max_tokens is not None else room,
            stop=_stops(req.stop),
            ignore_eos=bool(req.ignore_eos),
            logprobs=logprobs,
            grammar=grammar,
        )
    except InvalidRequestError as exc:
        raise invalid_request(str(exc), exc.param) from None
    opts = req.stream_options
    if opts is not None and not req.stream:
        raise invalid_request(
            "stream_options is only allowed when stream is true", "stream_options"
        )
    return PreparedRequest(
        kind=kind,
        prompt_ids=ids,
        params=params,
        max_completion_tokens=params.max_tokens or room,
        stream=bool(req.stream),
        include_usage=bool(opts and opts.include_usage),
        logprobs=logprobs,
        service_tier=req.service_tier,
        task_id=(req.metadata or {}).get("task_id"),
        cache_key=req.prompt_cache_key or None,
    )


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _message_dict(i: int, m) -> dict:
    content = m.content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if part.type != "text" or part.text is None:
                raise invalid_request(
                    f"content part type {part.type!r} is not supported: this model reads text",
                    f"messages[{i}].content[{j}]",
                )
            texts.append(part.text)
        content = "".join(texts)
    d: dict = {"role": "system" if m.role == "developer" else m.role, "content": content or ""}
    if m.name is not None:
        d["name"] = m.name
    if m.tool_calls is not None:
        d["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    return d
