"""The event loop's lag: what one sample is, and that a stalled loop shows as lag."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from smesh.agent import looplag
from smesh.agent.config import ConfigError, load
from smesh.agent.metrics import AgentMetrics
from smesh.dataplane import loop as loops


def test_a_sample_is_the_wait_from_hand_over_to_run_never_negative() -> None:
    assert looplag.lag(10.0, 10.25) == 0.25
    assert looplag.lag(10.0, 9.99) == 0.0  # two threads' clocks: never a negative lag


def test_a_sample_that_runs_is_observed_with_the_probe_clock() -> None:
    seen: list[float] = []
    now = iter([5.004])
    loop = asyncio.new_event_loop()
    try:
        probe = looplag.LagProbe(loop, 0.1, seen.append, clock=lambda: next(now))
        probe._ran(5.0)  # what the loop runs for a sample handed over at 5.0
    finally:
        loop.close()
    assert seen == [pytest.approx(0.004)]


@pytest.mark.parametrize("interval", [0.0, 0.005, 61.0])
def test_intervals_outside_the_bounds_are_refused(interval: float) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match="loop lag interval"):
            looplag.LagProbe(loop, interval, print)
    finally:
        loop.close()


@pytest.mark.parametrize("kind", loops.LOOP_KINDS)
def test_a_stalled_loop_shows_as_one_long_sample(kind: loops.LoopKind) -> None:
    """A callback that holds the loop for 0.5 s: the sample handed over meanwhile waits for
    it, and only one sample waits (one in flight), not one per interval."""
    metrics = AgentMetrics()
    seen: list[float] = []

    def observe(seconds: float) -> None:
        seen.append(seconds)
        metrics.loop_lag.observe(seconds)

    async def main() -> tuple[list[float], list[float]]:
        probe = looplag.LagProbe(asyncio.get_running_loop(), 0.01, observe)
        probe.start()
        try:
            await asyncio.sleep(0.3)  # a free loop: samples come and wait little
            before = list(seen)
            seen.clear()
            time.sleep(0.5)  # the stall: no callback runs, the probe's sample waits
            await asyncio.sleep(0)  # the waiting sample runs now
            return before, list(seen)
        finally:
            probe.stop()

    before, after = loops.run(main(), kind)
    assert before, "no sample ran on a free loop in 0.3 s"
    assert len(after) == 1  # 0.5 s at a 10 ms interval, yet one sample in flight
    assert after[0] >= 0.1  # it waited for (most of) the stall; generous for a busy host
    count = metrics.registry.get_sample_value("smesh_agent_event_loop_lag_seconds_count")
    assert count == len(before) + 1
    tail = metrics.registry.get_sample_value(
        "smesh_agent_event_loop_lag_seconds_bucket", {"le": "0.05"}
    )
    assert tail is not None
    assert tail < count  # the stall's sample is above 50 ms


def test_the_interval_is_a_bounded_duration_and_zero_turns_it_off(tmp_path: Path) -> None:
    base = ["node=n", "workloads=/w"]
    assert load(None, base, environ={}).loop_lag_interval == 0.1
    assert load(None, [*base, "loopLagInterval=0"], environ={}).loop_lag_interval == 0
    assert load(None, [*base, "loopLagInterval=1s"], environ={}).loop_lag_interval == 1.0
    for value in ("5ms", "2m", "-1", "often"):
        with pytest.raises(ConfigError, match=r"loopLagInterval: "):
            load(None, [*base, f"loopLagInterval={value}"], environ={})


@pytest.mark.parametrize("kind", loops.LOOP_KINDS)
def test_a_stopped_probe_samples_no_more(kind: loops.LoopKind) -> None:
    seen: list[float] = []

    async def main() -> tuple[int, int]:
        probe = looplag.LagProbe(asyncio.get_running_loop(), 0.01, seen.append)
        probe.start()
        await asyncio.sleep(0.2)
        probe.stop()  # a sample handed over just before it is not observed either
        stopped_at = len(seen)
        await asyncio.sleep(0.2)
        return stopped_at, len(seen)

    stopped_at, later = loops.run(main(), kind)
    assert stopped_at > 0
    assert later == stopped_at
