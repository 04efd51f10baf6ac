"""Reconnect backoff: exponential, capped, jittered downwards, reset on success."""

from __future__ import annotations

import random

import pytest

from smesh.kubernetes.backoff import Backoff


def test_doubles_up_to_the_cap_and_resets() -> None:
    b = Backoff(initial=0.5, cap=4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_jitter_only_shortens() -> None:
    b = Backoff(initial=1.0, cap=1.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(100)]
    assert all(0.8 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 50


def test_never_overflows() -> None:
    b = Backoff(initial=0.1, cap=30.0, jitter=0.0, attempts=10_000)
    assert b.next_delay() == 30.0


@pytest.mark.parametrize(
    "kw", [{"initial": 0.0}, {"initial": 5.0, "cap": 1.0}, {"factor": 0.5}, {"jitter": 1.0}]
)
def test_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kw)  # type: ignore[arg-type]
