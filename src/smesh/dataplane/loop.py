"""The event loop the agent's data plane runs on: uvloop unless the config says otherwise.

Carriers made the data plane a few callbacks per message, so the loop's own turn became
a visible share of a round trip; uvloop's turn is shorter (A/B in docs/benchmarks.md).
The standard loop stays one setting away (``eventLoop: asyncio``), for debugging and for
platforms without a uvloop build.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from smesh.errors import SmeshError

T = TypeVar("T")
LoopKind = Literal["uvloop", "asyncio"]
LOOP_KINDS: tuple[LoopKind, ...] = ("uvloop", "asyncio")


class LoopUnavailable(SmeshError):
    """The configured event loop cannot be created here."""


def loop_factory(kind: LoopKind) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop  # noqa: PLC0415 - only when chosen
    except ImportError as exc:
        raise LoopUnavailable(
            f"eventLoop: uvloop cannot be imported ({exc}); install it (pip install uvloop) "
            "or set eventLoop: asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: LoopKind) -> T:
    """Run *main* to completion on a new loop of *kind* (like asyncio.run)."""
    try:
        factory = loop_factory(kind)
    except LoopUnavailable:
        main.close()  # never started: no "was never awaited" warning on the way out
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
