"""Anthropic's Messages API (`POST /v1/messages`) over the chat pipeline: `translate` reads a
request as a chat request, `shape` and `stream` answer in Anthropic's shapes, `errors` speaks
Anthropic's error body, `route` runs it."""
