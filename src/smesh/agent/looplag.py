"""How long the agent's event loop keeps something that is ready waiting: its lag.

Every byte an agent relays waits for one turn of its single event loop, so anything that
holds the loop (a long callback, a garbage collection, a burst of handshakes, a scrape)
delays every connection of the node by as much. The lag is exported always
(``smesh_agent_event_loop_lag_seconds``), so that a stall on a user's node is visible
without a profiler.

Why a thread, not a timer on the loop: the loop's own timers are whole milliseconds
(libuv's, under uvloop; the standard loop rounds its poll timeout up to 1 ms): on an
idle loop of this project's machines, 10 ms timers measured with ``time.perf_counter``
fired from 0.9 ms early to 0.9 ms late under uvloop and 0.01 to 0.36 ms late on the
standard loop, so a timer's lateness cannot show a stall under a millisecond. A thread
that sleeps the interval, then hands the loop a callback with ``call_soon_threadsafe``,
is what an arriving packet is to the loop: a wake-up of its poll, then a wait for
whatever runs before it. Timed from the hand-over to the moment it runs, that wait is
microsecond-precise, and the moment does not depend on the loop's own phase, so the
samples are of the loop at random times.

One sample is in flight at a time: a loop stalled for a second gets one sample of that
second, not a queue of them. A stall in pure Python holds the GIL, which the thread needs
to hand its sample over (CPython takes the GIL from the loop thread after its switch
interval, 5 ms), so a stall under 5 ms that never releases the GIL shows as its remainder.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

#: The shortest interval the configuration allows (each sample wakes a thread and the loop).
MIN_INTERVAL = 0.01
MAX_INTERVAL = 60.0


def lag(handed_over: float, ran: float) -> float:
    """The wait of one sample; clocks of two threads never make it negative."""
    return max(0.0, ran - handed_over)


class LagProbe:
    """Samples *loop*'s lag every *interval* seconds into *observe* (from the loop)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        observe: Callable[[float], None],
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise ValueError(
                f"a loop lag interval of {interval:g}s is outside "
                f"{MIN_INTERVAL:g}s to {MAX_INTERVAL:g}s"
            )
        self._loop = loop
        self._interval = interval
        self._observe = observe
        self._clock = clock
        self._stopped = False
        self._in_flight = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="loop-lag", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """The thread ends at its next wake-up, unwaited for: a stopping agent is not held
        up by it (a daemon thread never holds the process either)."""
        self._stopped = True
        self._thread = None

    def _run(self) -> None:
        # time.sleep, not Event.wait: on the lab's VMs a timed wait on an Event cost about
        # 55 µs of CPU per wake-up, a sleep 35 µs (docs/benchmarks.md, "The p99 on fresh
        # agents"); a stopped probe's thread ends at its next wake-up instead.
        while True:
            time.sleep(self._interval)
            if self._stopped:
                return
            if self._in_flight:
                continue  # the last sample still waits: the loop is stalled, it will say so
            self._in_flight = True
            try:
                self._loop.call_soon_threadsafe(self._ran, self._clock())
            except RuntimeError:  # the loop closed under us: nothing left to measure
                return

    def _ran(self, handed_over: float) -> None:
        self._in_flight = False
        if self._stopped:  # handed over just before the stop
            return
        self._observe(lag(handed_over, self._clock()))
