"""The receiver's window: credit back as the app takes bytes, growth only for fast apps."""

from __future__ import annotations

from smesh.tunnel.mux import INITIAL_WINDOW
from smesh.tunnel.window import (
    GROW_WITHIN,
    MAX_WINDOW,
    GrowthBudget,
    ReceiveWindow,
)

QUARTER = INITIAL_WINDOW // 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_credit_goes_back_in_quarters_of_the_window() -> None:
    clock = Clock()
    w = ReceiveWindow(GrowthBudget(), clock)
    assert w.received(QUARTER)
    clock.now = 1.0
    assert w.taken(QUARTER - 1, caught_up=True) == 0
    assert w.taken(1, caught_up=True) == QUARTER  # a second for a quarter: no growth
    assert (w.size, w.left) == (INITIAL_WINDOW, INITIAL_WINDOW)


def test_the_peer_may_not_send_past_the_window() -> None:
    w = ReceiveWindow(GrowthBudget(), Clock())
    assert w.received(INITIAL_WINDOW)
    assert not w.received(1)


def test_an_app_that_keeps_up_with_a_fast_stream_gets_a_window_doubling_to_the_cap() -> None:
    budget, clock = GrowthBudget(), Clock()
    w = ReceiveWindow(budget, clock)
    sizes = []
    while w.size < MAX_WINDOW:
        chunk = w.size // 4
        assert w.received(chunk)
        clock.now += GROW_WITHIN / 2
        increment = w.taken(chunk, caught_up=True)
        assert increment > chunk  # the credit for the bytes, and the growth
        sizes.append(w.size)
    assert sizes == [2 * INITIAL_WINDOW * 2**i for i in range(len(sizes))]
    clock.now += 0.001
    assert w.taken(MAX_WINDOW // 4, caught_up=True) == MAX_WINDOW // 4
    assert w.size == MAX_WINDOW
    assert budget.in_use == MAX_WINDOW - INITIAL_WINDOW
    w.release()
    assert budget.in_use == 0


def test_an_app_that_lags_behind_keeps_the_window() -> None:
    clock = Clock()
    w = ReceiveWindow(GrowthBudget(), clock)
    clock.now = 0.001
    assert w.taken(QUARTER, caught_up=False) == QUARTER
    assert w.size == INITIAL_WINDOW


def test_growth_stops_when_the_node_budget_is_spent() -> None:
    budget, clock = GrowthBudget(total=INITIAL_WINDOW // 2), Clock()
    first, second = ReceiveWindow(budget, clock), ReceiveWindow(budget, clock)
    clock.now = 0.001
    assert first.taken(QUARTER, caught_up=True) == QUARTER + INITIAL_WINDOW // 2
    assert second.taken(QUARTER, caught_up=True) == QUARTER
    assert (first.size, second.size, budget.left) == (INITIAL_WINDOW * 3 // 2, INITIAL_WINDOW, 0)
    first.release()
    assert budget.left == INITIAL_WINDOW // 2
