"""OpenAI's Responses API (`POST /v1/responses`) over the chat pipeline: `translate` reads a
request as a chat request, `shape` and `stream` answer in the Responses shapes, `route` runs it."""
