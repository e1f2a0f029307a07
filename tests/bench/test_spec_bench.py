"""The speculation workloads and the speculation part of `bench engine` (structure and the
identity check; no timings asserted)."""

from __future__ import annotations

import pytest
from rich.console import Console

from tests.engine.engine_fixtures import prompts as random_prompts
from tests.engine.engine_fixtures import tiny_engine
from tokenfactory.bench.spec_bench import (
    RunStats,
    SpecBenchOptions,
    cell_rounds,
    combine_runs,
    compare_outputs,
    first_difference,
    lookup_potential,
    run_speculation_bench,
)
from tokenfactory.bench.spec_workloads import WORKLOADS, WorkloadPrompt, load_workload


@pytest.mark.parametrize("name", WORKLOADS)
def test_workloads_are_chat_messages(name: str) -> None:
    items = load_workload(name)
    assert len(items) >= 8
    assert len({p.name for p in items}) == len(items)
    for p in items:
        assert isinstance(p, WorkloadPrompt) and p.workload == name and p.kind
        assert p.messages[-1]["role"] == "user" and p.messages[-1]["content"].strip()
        assert all(m["role"] in ("system", "user") for m in p.messages)


def test_agent_prompts_carry_the_context_to_copy() -> None:
    agent = load_workload("agent")
    # Every agent task hands the model something to copy: a block of code/data or a document.
    assert all(len(p.messages[-1]["content"]) > 250 for p in agent)
    assert sum(len(p.messages[-1]["content"]) for p in agent) > 4000
    assert {"rewrite", "json-transform", "quote", "fix-bug"} <= {p.kind for p in agent}


def test_load_workload_returns_fresh_lists_and_rejects_unknown_names() -> None:
    a = load_workload("chat")
    a[0].messages.append({"role": "user", "content": "changed"})
    assert load_workload("chat")[0].messages[-1]["content"] != "changed"
    with pytest.raises(ValueError, match="unknown workload"):
        load_workload("code")


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
    out = compare_outputs(["a", "b"], [[1, 2], [3, 4]], [[1, 2], [3, 9]])
    assert [(m.prompt, m.index, m.first_difference) for m in out] == [("b", 1, 1)]


def test_lookup_potential_drafts_deeper_after_a_whole_draft_was_accepted() -> None:
    context = list(range(100, 140))
    shallow = lookup_potential([context], [context[:30]], k=1)
    rule = lookup_potential([context], [context[:30]], k=1, k_after_full=6)
    assert rule.tokens == shallow.tokens == 29
    assert shallow.steps == 15 and rule.steps < shallow.steps
    assert rule.acceptance == 1.0
    # No whole draft accepted: the rule never applies.
    fresh = lookup_potential([context], [list(range(500, 530))], k=1, k_after_full=6)
    assert fresh == lookup_potential([context], [list(range(500, 530))], k=1)


def test_cell_rounds_cover_the_whole_workload() -> None:
    assert cell_rounds(10, 1) == [[i] for i in range(10)]
    assert cell_rounds(10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1]]
    assert cell_rounds(3, 8) == [[0, 1, 2, 0, 1, 2, 0, 1]]
    with pytest.raises(ValueError):
        cell_rounds(0, 1)


def test_combine_runs_adds_rounds() -> None:
    a = RunStats(1.0, 10, 10, 9, 9, 4, 3, 0.5, 12)
    b = RunStats(2.0, 20, 15, 14, 14, 8, 5, 1.5, 19)
    both = combine_runs([a, b])
    assert both == RunStats(3.0, 30, 25, 23, 23, 12, 8, 2.0, 31)
    assert both.acceptance == 8 / 12 and both.decode_tokens_per_s == 31 / 2.0


def test_lookup_potential_on_copied_and_fresh_text() -> None:
    context = list(range(100, 140))
    copied = lookup_potential([context], [context[:30]], k=4)
    assert copied.acceptance == 1.0 and copied.tokens_per_step > 3
    fresh = lookup_potential([context], [list(range(500, 530))], k=4)
    assert fresh.drafted == 0 and fresh.tokens_per_step == 1.0
    assert fresh.tokens == 29  # every output token after the prompt's step


def test_speculation_part_structure_and_identity() -> None:
    engine = tiny_engine(speculation="ngram")
    # Prompts that repeat themselves, so prompt lookup has drafts to verify.
    base = random_prompts(4, seed=3, lo=8, hi=16)

    def source(workload: str) -> tuple[list[list[int]], list[str]]:
        return [p * 3 for p in base], [f"{workload}-{i}" for i in range(len(base))]

    cells: list[int] = []
    opts = SpecBenchOptions(batch_sizes=[1, 3], max_tokens=12, warmup_tokens=2)
    result = run_speculation_bench(
        engine,
        opts,
        Console(quiet=True),
        on_cell=lambda r: cells.append(len(r["cells"])),
        prompts=source,
    )
    assert result["proposers"] == ["ngram"]
    assert len(result["cells"]) == len(WORKLOADS) * 2 == cells[-1]
    assert result["mismatches"] == 0
    for cell in result["cells"]:
        # batch 1: the 4 prompts one at a time; batch 3: two rounds (the last wraps around)
        assert cell["requests"] == {1: 4, 3: 6}[cell["batch"]]
        assert cell["ngram_potential"]["steps"] >= cell["requests"]
        assert cell["identical"] and cell["mismatches"] == []
        for side in ("baseline", "speculative"):
            run = cell[side]
            # EOS may end one early, but every request of every round ran
            assert cell["requests"] <= run["output_tokens"] <= cell["requests"] * 12
            assert run["tokens_per_step"] >= 1.0
        assert cell["baseline"]["output_tokens"] == cell["speculative"]["output_tokens"]
        assert cell["baseline"]["draft_tokens"] == 0
        assert cell["baseline"]["acceptance"] is None
        s = cell["speculative"]
        assert s["accepted_tokens"] <= s["draft_tokens"]
        assert cell["speedup"] is not None and cell["ngram_potential"]["tokens"] > 0
