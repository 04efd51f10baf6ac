"""Garbage collections are timed into the agent's metrics, and start-up objects frozen."""

from __future__ import annotations

import collections.abc
import gc

import pytest

from smesh.agent import collector
from smesh.agent.metrics import AgentMetrics


@pytest.fixture
def unfrozen() -> collections.abc.Iterator[None]:
    yield
    gc.unfreeze()


def _pauses(metrics: AgentMetrics, generation: str) -> float:
    value = metrics.registry.get_sample_value(
        "smesh_agent_gc_pause_seconds_count", {"generation": generation}
    )
    return value or 0.0


def test_each_collection_is_timed_by_generation_until_removed() -> None:
    metrics = AgentMetrics()
    timer = collector.CollectorTimer(metrics)
    timer.install()
    timer.install()  # twice is once
    try:
        gc.collect(2)
        gc.collect(0)
    finally:
        timer.remove()
    assert _pauses(metrics, "2") == 1
    assert _pauses(metrics, "0") >= 1
    total = metrics.registry.get_sample_value(
        "smesh_agent_gc_pause_seconds_sum", {"generation": "2"}
    )
    assert total is not None
    assert total > 0
    gc.collect(2)
    assert _pauses(metrics, "2") == 1  # removed: no longer counted


def test_freezing_takes_what_lives_now_out_of_full_collections(unfrozen: None) -> None:
    kept = [{"n": n} for n in range(20_000)]  # long-lived, as an informer's first list
    frozen = collector.freeze_long_lived()
    assert frozen >= len(kept)
    assert gc.get_freeze_count() == frozen
    # A full collection no longer walks them: fewer objects tracked than were frozen.
    assert len(gc.get_objects()) < frozen
