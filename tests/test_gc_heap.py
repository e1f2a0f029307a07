import gc
import logging

from tokenfactory.gc_heap import GcPauseWatch, freeze_heap


def test_freeze_heap_exempts_what_is_alive_now():
    kept = [[i] for i in range(1000)]  # containers: tracked by the collector
    try:
        frozen = freeze_heap()
        assert frozen == gc.get_freeze_count() >= len(kept)
        # the frozen objects are no longer in any generation a collection walks
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(x) in tracked for x in kept)
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0


def test_pause_watch_times_each_collection_and_warns_on_long_ones(caplog):
    heard: list[tuple[int, float]] = []
    watch = GcPauseWatch(on_pause=lambda gen, s: heard.append((gen, s)), warn_s=0.0).install()
    try:
        with caplog.at_level(logging.WARNING, logger="tokenfactory.gc_heap"):
            gc.collect(2)
    finally:
        watch.remove()
    assert any(g == 2 for g, _ in heard)
    assert watch.longest_s == max(s for _, s in heard)
    assert watch.count == len(heard) >= 1
    assert all(s >= 0 for _, s in heard)
    assert "generation 2" in caplog.text
    gc.collect(2)  # removed: no longer heard
    assert watch.count == len(heard)


def test_pause_watch_is_quiet_below_its_threshold(caplog):
    watch = GcPauseWatch(warn_s=10.0).install()
    watch.install()  # installing twice hooks once
    try:
        with caplog.at_level(logging.WARNING, logger="tokenfactory.gc_heap"):
            gc.collect(0)
    finally:
        watch.remove()
    assert gc.callbacks.count(watch._callback) == 0
    assert watch.count == 1
    assert caplog.text == ""
