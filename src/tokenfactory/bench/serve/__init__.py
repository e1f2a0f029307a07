"""`tokenfactory bench serve`: a load generator and report for any OpenAI-compatible endpoint.

It speaks HTTP only (never imports the engine or the server), so it measures tokenfactory,
vLLM, SGLang or a hosted API the same way. Modules, one concept each:

- `lengths`, `text`: token-length distributions and locally generated natural-looking text
- `workloads`, `trace`: random, chat, agent and Mooncake-trace request streams
- `arrivals`: Poisson / gamma inter-arrival times
- `tiers_info`: tier promises and prices (from /v1/tiers, the command line or tiers.toml), keys
- `client`: one streamed request -> `RequestRecord` (timestamps, usage, errors)
- `runner`: one load point (rate and/or concurrency) with live progress
- `metrics`: per-tier and overall summaries (TTFT, TPOT, ITL, E2EL, goodput, revenue)
- `report`, `html`, `console`: JSON (stable schema), HTML with plots, console tables, compare
- `fake_server`, `selfbench`: a fast fake endpoint and the generator's own throughput check
"""
