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

The other way is shrinking. An app that does not read leaves what it was sent in the
agent (and in the kernel's buffers of the agent's socket to it); with hundreds of such
streams that grew without bound (issue 18: 400 streams held 220 MiB in an agent, and the
node's TCP memory passed the kernel's pressure threshold). A :class:`HeldBudget` counts
those bytes node-wide and per pod; as it fills, a window hands back less credit than its
app took (past :data:`SHRINK_FROM` of it, and only while the app is behind), down to
:data:`MIN_WINDOW`, and a stream whose DATA would take a full budget past its share is
reset by the carrier. A window cannot shrink before the peer has used its initial credit
(the protocol grants :data:`INITIAL_WINDOW` up front), so the reset is what makes the
budget a bound.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from smesh.tunnel.mux import INITIAL_WINDOW

MAX_WINDOW = 8 * 1024 * 1024
GROW_WITHIN = 0.010  # seconds
GROWTH_BUDGET = 64 * 1024 * 1024  # default of limits.streamWindowBudgetMiB
MIN_WINDOW = 64 * 1024  # a shrunk window: a slow app still gets whole batches
SHRINK_FROM = 0.5  # the fill of a budget past which windows shrink (and stop growing)
HELD_BUDGET = 256 * 1024 * 1024  # default of limits.unreadBudgetMiB (node)
HELD_BUDGET_PER_POD = 64 * 1024 * 1024  # default of limits.unreadBudgetPerPodMiB
OVERSHOOT = 0.125  # how far past a budget streams under their share may take it
LOG_EVERY = 5.0  # seconds between log lines about streams reset over budget


def _nothing() -> None:
    pass


class PodAccount:
    """What one pod's streams hold for its apps, and how many streams hold any.

    Its streams keep it alive; the :class:`HeldBudget` only refers to it weakly, so the
    account of a pod whose streams have all ended (holding nothing, since an ending
    stream lets go of what it held) goes with the last of them.
    """

    __slots__ = ("__weakref__", "budget", "held", "holders", "limit")

    def __init__(self, budget: HeldBudget, limit: int) -> None:
        self.budget = budget
        self.limit = limit
        self.held = 0
        self.holders = 0

    def pressure(self) -> float:
        """How full the fuller of the pod's and the node's budgets is (1.0: full)."""
        node = self.budget
        return max(self.held / self.limit, node.held / node.limit)

    def change(self, before: int, after: int) -> None:
        """One stream's holding went from *before* to *after* bytes."""
        delta = after - before
        self.held += delta
        self.budget.held += delta
        if not before and after:
            self.holders += 1
            self.budget.holders += 1
        elif before and not after:
            self.holders -= 1
            self.budget.holders -= 1

    def over_share(self, holding: int) -> bool:
        """Whether a stream that now holds *holding* bytes must let go: a budget it is in
        is exceeded and it holds more than an even split of that budget, or the budget is
        exceeded by more than :data:`OVERSHOOT` of it.

        Only a stream that grows is asked (a stalled one receives nothing more), so the
        even split alone would let newcomers under it push the total ever further.
        """
        node = self.budget
        return _over(self.held, self.limit, self.holders, holding) or _over(
            node.held, node.limit, node.holders, holding
        )


def _over(held: int, limit: int, holders: int, holding: int) -> bool:
    if held <= limit:
        return False
    return holding > limit // max(holders, 1) or held > limit + int(limit * OVERSHOOT)


class HeldBudget:
    """Bytes the agent holds for apps that have not taken them: node-wide and per pod.

    A held byte is one a stream received for its app and could not hand over (the app's
    socket was full), plus, while that lasts, the kernel's send buffer of the socket
    (:attr:`kernel_charge`, bounded by ``SO_SNDBUF``): both are memory the app's
    slowness costs the node. An app that keeps up holds nothing.
    """

    __slots__ = (
        "_logged_at",
        "_pods",
        "held",
        "holders",
        "kernel_charge",
        "limit",
        "on_reset",
        "on_shrink",
        "pod_limit",
        "resets",
        "shrinks",
    )

    def __init__(
        self,
        limit: int = HELD_BUDGET,
        pod_limit: int = HELD_BUDGET_PER_POD,
        *,
        kernel_charge: int = 0,
        on_shrink: Callable[[], None] = _nothing,
        on_reset: Callable[[], None] = _nothing,
    ) -> None:
        if limit <= 0 or pod_limit <= 0:
            raise ValueError("a held budget must be positive")
        self.limit = limit
        self.pod_limit = pod_limit
        self.kernel_charge = kernel_charge  # counted per stalled app socket
        self.held = 0
        self.holders = 0
        self.shrinks = 0  # windows that handed back less than their app took
        self.resets = 0  # streams reset for holding more than their share of a full budget
        self.on_shrink = on_shrink
        self.on_reset = on_reset
        # Weak: one entry per pod with a live stream, not per pod name ever seen.
        self._pods: weakref.WeakValueDictionary[str, PodAccount] = weakref.WeakValueDictionary()
        self._logged_at = -LOG_EVERY

    def pod(self, name: str) -> PodAccount:
        """*name*'s account, shared by all its live streams; keep it as long as one lives."""
        account = self._pods.get(name)
        if account is None:
            account = self._pods[name] = PodAccount(self, self.pod_limit)
        return account

    def pods(self) -> dict[str, int]:
        """Bytes held per pod, for /debug and tests."""
        return {name: a.held for name, a in list(self._pods.items()) if a.held}

    def accounts(self) -> int:
        """Pod accounts kept (those some live stream refers to)."""
        return len(self._pods)

    def shrunk(self) -> None:
        self.shrinks += 1
        self.on_shrink()

    def reset(self, now: float) -> bool:
        """A stream is reset over budget; whether to log it (once per :data:`LOG_EVERY`)."""
        self.resets += 1
        self.on_reset()
        if now - self._logged_at < LOG_EVERY:
            return False
        self._logged_at = now
        return True


class GrowthBudget:
    """The bytes by which an agent's stream windows may exceed the initial window in all."""

    __slots__ = ("held", "left", "total")

    def __init__(self, total: int = GROWTH_BUDGET, held: HeldBudget | None = None) -> None:
        self.total = total
        self.left = total
        self.held = held or HeldBudget()  # what stalled apps leave in the agent

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
    __slots__ = ("_account", "_budget", "_clock", "_granted_at", "left", "size", "unacked")

    def __init__(
        self,
        budget: GrowthBudget,
        clock: Callable[[], float],
        account: PodAccount | None = None,
    ) -> None:
        self._budget = budget
        self._account = account or budget.held.pod("")
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
        pressure = self._account.pressure()  # once per grant, not per message
        if pressure > SHRINK_FROM:
            if not caught_up:  # an app that keeps up holds nothing: its window stays
                increment -= self._shrink(pressure)
        elif self.size < INITIAL_WINDOW:  # the pressure is gone: back to the initial size
            increment += INITIAL_WINDOW - self.size
            self.size = INITIAL_WINDOW
        if (
            caught_up
            and INITIAL_WINDOW <= self.size < MAX_WINDOW
            and now - self._granted_at < GROW_WITHIN
        ):  # a fast app grows its window, pressure or not: it holds nothing
            extra = self._budget.take(min(self.size, MAX_WINDOW - self.size))
            self.size += extra
            increment += extra
        self._granted_at = now
        self.unacked = 0
        self.left += increment
        return increment

    def _shrink(self, pressure: float) -> int:
        """Keep back part of the credit due: the window falls linearly from its size at
        :data:`SHRINK_FROM` of the budget to :data:`MIN_WINDOW` at a full one."""
        room = max(0.0, (1.0 - pressure) / (1.0 - SHRINK_FROM))
        target = max(MIN_WINDOW, int(self.size * room))
        cut = min(self.unacked, self.size - target)
        if cut <= 0:
            return 0
        if self.size > INITIAL_WINDOW:  # growth goes back to the growth budget first
            self._budget.give_back(min(cut, self.size - INITIAL_WINDOW))
        self.size -= cut
        self._account.budget.shrunk()
        return cut

    def release(self) -> None:
        """The stream ended: its growth goes back to the budget."""
        self._budget.give_back(max(0, self.size - INITIAL_WINDOW))
        self.size = INITIAL_WINDOW
