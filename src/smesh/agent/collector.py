"""Python's cyclic garbage collector, timed and kept off the agent's hot path.

A collection stops the event loop for as long as it takes, and a full (generation 2) one
walks every tracked object the process holds: measured in the Kubernetes benchmark's
agents, 15 to 46 ms at 53,000 to 63,000 objects, most of them made at start-up (modules,
the BPF objects' bindings, the informer's first list) and alive until the agent stops.
Such a pause lands on whatever waits then: a CNI ADD (the enrolment p99), a handshake.

So the agent times every collection (``smesh_agent_gc_pause_seconds``) and, once it has
started and reconciled its first snapshot, freezes what exists then
(:func:`gc.freeze`): those objects move to a permanent generation that later collections
skip. Objects frozen are still freed by reference counting when their last reference
goes; only garbage in reference cycles that existed at the freeze stays. No collection
runs first to find it: that collection is itself the full pause (110 ms measured on a
loaded 2-core machine, with CNI ADDs waiting), for a few kilobytes of start-up garbage.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Protocol


class PauseObserver(Protocol):
    def observe(self, generation: int, seconds: float) -> None: ...


class CollectorTimer:
    """Feeds the duration of each collection to *observer* through :data:`gc.callbacks`."""

    def __init__(self, observer: PauseObserver) -> None:
        self._observer = observer
        self._started = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def remove(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self._observer.observe(int(info["generation"]), time.perf_counter() - self._started)


def freeze_long_lived() -> int:
    """Move every object alive now out of later collections' way; how many there are."""
    gc.freeze()
    return gc.get_freeze_count()
