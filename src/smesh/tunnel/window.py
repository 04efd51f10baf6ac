"""How much DATA the peer may send on one stream: the receiver's side of the credit loop.

A window of :data:`~smesh.tunnel.mux.INITIAL_WINDOW` bounds what a stalled app makes
the agent hold, but it also bounds a fast stream: the sender waits whenever the window
is used up before the credit comes back, and on a busy node that round trip takes
milliseconds. So the receiver grows a stream's window (by handing back more credit than
the app took) when a quarter of it was taken within :data:`GROW_WITHIN` of the last
grant and the app has nothing left waiting, up to :data:`MAX_WINDOW`, and only out of a
node-wide :class:`GrowthBudget`: a window then covers about 40 ms of what the app really
reads. Growth is the receiver's choice alone; the sender only ever sees WINDOW frames,
so agents that never grow and agents that do talk to each other unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from smesh.tunnel.mux import INITIAL_WINDOW

MAX_WINDOW = 8 * 1024 * 1024
GROW_WITHIN = 0.010  # seconds
GROWTH_BUDGET = 64 * 1024 * 1024  # default of limits.streamWindowBudgetMiB


class GrowthBudget:
    """The bytes by which an agent's stream windows may exceed the initial window in all."""

    __slots__ = ("left", "total")

    def __init__(self, total: int = GROWTH_BUDGET) -> None:
        self.total = total
        self.left = total

    @property
    def in_use(self) -> int:
        return self.total - self.left

    def take(self, want: int) -> int:
        got = min(want, self.left)
        self.left -= got
        return got

    def give_back(self, amount: int) -> None:
        self.left += amount


class ReceiveWindow:
    __slots__ = ("_budget", "_clock", "_granted_at", "left", "size", "unacked")

    def __init__(self, budget: GrowthBudget, clock: Callable[[], float]) -> None:
        self._budget = budget
        self._clock = clock  # read only when credit goes back, not per message
        self.size = INITIAL_WINDOW  # credit outstanding once the app took everything
        self.left = INITIAL_WINDOW  # DATA the peer may still send
        self.unacked = 0  # taken by the app, not yet handed back
        self._granted_at = clock()

    def received(self, size: int) -> bool:
        """The peer sent *size* bytes of DATA; False if that is more than it may."""
        self.left -= size
        return self.left >= 0

    def taken(self, size: int, caught_up: bool) -> int:
        """The app took *size* bytes: the WINDOW increment to send now (0: not yet).

        *caught_up*: the app has taken everything received so far.
        """
        self.unacked += size
        if self.unacked < self.size // 4:
            return 0
        increment = self.unacked
        now = self._clock()
        if caught_up and now - self._granted_at < GROW_WITHIN and self.size < MAX_WINDOW:
            extra = self._budget.take(min(self.size, MAX_WINDOW - self.size))
            self.size += extra
            increment += extra
        self._granted_at = now
        self.unacked = 0
        self.left += increment
        return increment

    def release(self) -> None:
        """The stream ended: its growth goes back to the budget."""
        self._budget.give_back(self.size - INITIAL_WINDOW)
        self.size = INITIAL_WINDOW
