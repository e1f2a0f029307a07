"""The step log `serve --step-log` writes and the planner reads."""

from __future__ import annotations

import pytest

from tokenfactory.engine.stats import StatsLog
from tokenfactory.scheduling.step_log import StepLogError, StepLogWriter, read_step_log
from tokenfactory.scheduling.step_stats import StepStats


def step(t: float, seqs: int = 4, prefill: int = 0) -> StepStats:
    return StepStats(started_at=t, duration_s=0.01, num_seqs=seqs, num_decode_tokens=seqs,
                     num_prefill_tokens=prefill, num_kv_tokens_read=seqs * 100, num_sampled=seqs,
                     num_preempted=0, num_waiting=1, num_running=seqs, kv_usage=0.2)


def test_every_recorded_step_reaches_the_log_and_reads_back_the_same(tmp_path):
    log = StatsLog()
    writer = StepLogWriter(tmp_path / "logs" / "steps.jsonl")
    log.add_sink(writer)
    steps = [step(1.0), step(1.02, prefill=64), step(1.05, seqs=2)]
    for s in steps:
        log.record(s)
    assert read_step_log(writer.path) == steps  # written a line at a time, before close
    writer.close()
    writer(step(2.0))  # a step after close is dropped, not an error on the engine's thread
    assert len(read_step_log(writer.path)) == 3


def test_a_last_line_cut_by_a_crash_is_skipped_but_other_damage_is_named(tmp_path):
    path = tmp_path / "steps.jsonl"
    writer = StepLogWriter(path)
    writer(step(1.0))
    writer(step(1.1))
    writer.close()
    text = path.read_text()
    path.write_text(text + text.splitlines()[0][:20])
    assert len(read_step_log(path)) == 2
    lines = text.splitlines()
    path.write_text(lines[0] + "\nnot json\n" + lines[1] + "\n")
    with pytest.raises(StepLogError, match="line 2"):
        read_step_log(path)
    path.write_text("")
    with pytest.raises(StepLogError, match="no steps"):
        read_step_log(path)
    with pytest.raises(StepLogError, match="cannot read"):
        read_step_log(tmp_path / "missing.jsonl")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StepLogError, match="cannot write the step log"):
        StepLogWriter(tmp_path / "a-file" / "steps.jsonl")
