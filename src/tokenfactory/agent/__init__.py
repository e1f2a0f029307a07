"""The agent runner: a sandboxed tool loop that talks to any OpenAI-compatible factory over
HTTP only (it imports nothing from the engine, the server or billing).

Modules, one concept each:

- `sandbox/`: workspace paths, allowlisted commands, network isolation
- `tools`: the tool schemas and their execution
- `client`: one chat-completions request with tools (task id header, prompt cache key)
- `pricing`: a response's cost at its tier's prices from `GET /v1/tiers`
- `loop`: the tool loop and its limits (steps, wall time, spending)
- `session`, `runner`: endpoint, key, model and prices for a run; one run end to end
- `summary`, `live`: the result summary and the console view
- `taskset`, `tasks/`, `evaluate`: the shipped file tasks, their checks, the tier comparison
- `command`: `tokenfactory agent` and `tokenfactory agent eval`
"""
