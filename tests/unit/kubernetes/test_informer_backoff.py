"""The informer waits out a backoff after a failure, unless woken: then it retries at once."""

from __future__ import annotations

import asyncio
import collections.abc
from typing import Any

from smesh.kubernetes.backoff import Backoff
from smesh.kubernetes.client import NAMESPACES
from smesh.kubernetes.errors import KubernetesError
from smesh.kubernetes.informer import Informer
from smesh.kubernetes.store import Synced


class DownThenUp:
    """An API that fails its first list, then lists nothing and watches forever."""

    def __init__(self) -> None:
        self.lists = 0

    async def list(self, *_: Any) -> tuple[str, list[Any]]:
        self.lists += 1
        if self.lists == 1:
            raise KubernetesError("connection refused")
        return "7", []

    async def watch(self, *_: Any) -> collections.abc.AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield  # pragma: no cover - never reached


async def first_sync(informer: Informer[Any]) -> Synced:
    async for item in informer.events():
        if isinstance(item, Synced):
            return item
    raise AssertionError("the stream ended")


def test_a_wake_cuts_a_backoff_wait_short() -> None:
    async def main() -> None:
        api = DownThenUp()
        informer = Informer(api, NAMESPACES, backoff=Backoff(initial=600, cap=600, jitter=0))  # type: ignore[arg-type]
        task = asyncio.create_task(first_sync(informer))
        while informer.stats.errors == 0:  # the first list failed: waiting 600 s
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert api.lists == 1
        informer.wake()
        synced = await asyncio.wait_for(task, 5)
        assert (synced.resource_version, api.lists) == ("7", 2)

    asyncio.run(main())


def test_without_a_wake_the_backoff_is_waited_out() -> None:
    async def main() -> None:
        api = DownThenUp()
        informer = Informer(api, NAMESPACES, backoff=Backoff(initial=600, cap=600, jitter=0))  # type: ignore[arg-type]
        task = asyncio.create_task(first_sync(informer))
        await asyncio.sleep(0.3)
        assert (api.lists, task.done()) == (1, False)
        task.cancel()

    asyncio.run(main())
