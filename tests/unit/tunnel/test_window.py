"""The receiver's window: credit back as the app takes bytes, growth only for fast apps."""

from __future__ import annotations

import pytest

from smesh.tunnel import window
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


# -- the budget for bytes held for apps that do not read --------------------------------

MiB = 1024 * 1024


def test_held_bytes_are_counted_per_pod_and_for_the_node() -> None:
    held = window.HeldBudget(limit=8 * MiB, pod_limit=4 * MiB)
    a, b = held.pod("pod-a"), held.pod("pod-b")
    a.change(0, MiB)
    b.change(0, 2 * MiB)
    a.change(MiB, 3 * MiB)
    assert (a.held, a.holders, b.held, held.held, held.holders) == (3 * MiB, 1, 2 * MiB, 5 * MiB, 2)
    assert a.pressure() == 0.75  # the pod's budget is the fuller one
    assert b.pressure() == 5 / 8  # the node's is
    a.change(3 * MiB, 0)
    assert (a.holders, held.holders, held.held) == (0, 1, 2 * MiB)
    assert held.pods() == {"pod-b": 2 * MiB}


def test_past_a_full_budget_only_a_stream_over_its_share_must_let_go() -> None:
    held = window.HeldBudget(limit=64 * MiB, pod_limit=8 * MiB)
    pod = held.pod("p")
    for _ in range(3):
        pod.change(0, 2 * MiB)
    assert not pod.over_share(2 * MiB)  # within the budget: nobody
    pod.change(0, 5 * MiB // 2)  # 8.5 MiB held by four streams: a share is 2 MiB
    assert pod.over_share(5 * MiB // 2)
    assert not pod.over_share(2 * MiB)
    pod.change(0, 3 * MiB // 4)  # a newcomer under its share, but the pod past an eighth over
    assert pod.over_share(3 * MiB // 4)


def test_the_node_budget_binds_across_pods() -> None:
    held = window.HeldBudget(limit=8 * MiB, pod_limit=8 * MiB)
    a, b = held.pod("a"), held.pod("b")
    a.change(0, 5 * MiB)
    b.change(0, 7 * MiB // 2)  # each pod within its budget, the node past its own
    assert a.over_share(5 * MiB)
    assert not b.over_share(7 * MiB // 2)  # a share of the node's is 4 MiB


def behind(held: window.HeldBudget, clock: Clock) -> window.ReceiveWindow:
    """A stream of pod "p" whose app lags behind its DATA."""
    w = window.ReceiveWindow(GrowthBudget(held=held), clock, held.pod("p"))
    assert w.received(INITIAL_WINDOW)
    return w


def test_windows_of_apps_that_lag_shrink_as_the_budget_fills() -> None:
    shrinks: list[int] = []
    held = window.HeldBudget(8 * MiB, 4 * MiB, on_shrink=lambda: shrinks.append(1))
    clock = Clock()
    w = behind(held, clock)
    other = held.pod("p")
    other.change(0, 2 * MiB)  # half the pod's budget: not yet
    clock.now = 1.0
    assert w.taken(QUARTER, caught_up=False) == QUARTER
    assert w.size == INITIAL_WINDOW
    assert not shrinks
    other.change(2 * MiB, 3 * MiB)  # three quarters: windows fall to half their size
    assert w.taken(QUARTER, caught_up=False) == 0  # the credit due is kept back
    assert w.size == INITIAL_WINDOW - QUARTER
    assert held.shrinks == len(shrinks) == 1
    other.change(3 * MiB, 4 * MiB)  # full: down to the floor, never below
    for _ in range(8):
        w.received(w.left)
        w.taken(w.size // 4 + 1, caught_up=False)
    assert w.size == window.MIN_WINDOW
    assert w.taken(w.size // 4, caught_up=False) == window.MIN_WINDOW // 4  # still moves
    other.change(4 * MiB, 0)  # the pressure is gone: back to the initial window at once
    increment = w.taken(w.size // 4, caught_up=False)
    assert increment == window.MIN_WINDOW // 4 + INITIAL_WINDOW - window.MIN_WINDOW
    assert w.size == INITIAL_WINDOW


def test_an_app_that_keeps_up_keeps_its_window_under_pressure_and_may_grow() -> None:
    held = window.HeldBudget(8 * MiB, 4 * MiB)
    clock = Clock()
    w = behind(held, clock)
    held.pod("p").change(0, 4 * MiB)
    clock.now = 1.0  # slow: no growth, and no shrinking either
    assert w.taken(QUARTER, caught_up=True) == QUARTER
    assert w.size == INITIAL_WINDOW
    clock.now += GROW_WITHIN / 2  # fast: it holds nothing, so it grows as without pressure
    assert w.taken(QUARTER, caught_up=True) == QUARTER + INITIAL_WINDOW
    assert held.shrinks == 0


def test_a_grown_window_that_shrinks_gives_its_growth_back() -> None:
    held = window.HeldBudget(8 * MiB, 4 * MiB)
    growth, clock = GrowthBudget(held=held), Clock()
    w = window.ReceiveWindow(growth, clock, held.pod("p"))
    clock.now = 0.001
    w.taken(QUARTER, caught_up=True)  # doubled
    assert growth.in_use == INITIAL_WINDOW
    held.pod("p").change(0, 4 * MiB)
    clock.now = 1.0
    w.taken(INITIAL_WINDOW // 2, caught_up=False)
    assert w.size == 2 * INITIAL_WINDOW - INITIAL_WINDOW // 2
    assert growth.in_use == INITIAL_WINDOW // 2
    w.release()
    assert growth.in_use == 0


def test_resets_over_budget_are_counted_each_and_logged_now_and_then() -> None:
    resets: list[int] = []
    held = window.HeldBudget(MiB, MiB, on_reset=lambda: resets.append(1))
    assert held.reset(100.0)
    assert not held.reset(100.0 + window.LOG_EVERY / 2)
    assert held.reset(100.0 + window.LOG_EVERY)
    assert held.resets == len(resets) == 3


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        window.HeldBudget(0, MiB)


def test_a_pod_account_goes_with_the_last_stream_of_its_pod() -> None:
    held = window.HeldBudget(8 * MiB, 4 * MiB)
    growth, clock = GrowthBudget(held=held), Clock()
    first = window.ReceiveWindow(growth, clock, held.pod("p"))
    second = window.ReceiveWindow(growth, clock, held.pod("p"))
    assert first._account is second._account  # one account per pod while streams live
    del first
    assert held.accounts() == 1
    for n in range(1000):  # pods come and go: their streams end, holding nothing
        account = held.pod(f"gone-{n}")
        account.change(0, 1024)
        account.change(1024, 0)
    del account
    assert held.accounts() == 1  # only the pod with a live stream is kept
    del second
    assert held.accounts() == 0
    assert (held.held, held.holders) == (0, 0)
