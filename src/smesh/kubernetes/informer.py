"""An informer: a local copy of a set of API objects, kept equal to the API server's.

The semantics are those of client-go's reflector: list, then watch from the list's
resourceVersion with bookmarks, remembering the resourceVersion of every event and bookmark
so that a dropped watch resumes exactly where it stopped. When the server no longer has that
version (410 Gone, after etcd compacted it) the informer relists and diffs the list against
its store, which is how deletions made while it was not watching are noticed. Errors are
retried forever with capped exponential backoff: an agent must outlive its API server.

:meth:`Informer.events` is the stream: it yields an :class:`~smesh.kubernetes.store.Event`
for each change and a :class:`~smesh.kubernetes.store.Synced` after each complete list. The
stream drives the informer (nothing is read from the API while the consumer is busy), and
:meth:`Informer.snapshot` equals what a consumer has been given at every yield.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from lightkube.models.meta_v1 import ObjectMeta

from smesh.kubernetes.backoff import Backoff
from smesh.kubernetes.client import Kind, KubeApi, Selection
from smesh.kubernetes.errors import KubernetesError, ResourceVersionGone
from smesh.kubernetes.protocol import Bookmark
from smesh.kubernetes.store import Event, Key, Meta, Store, Synced

log = logging.getLogger(__name__)


class HasMetadata(Protocol):
    @property
    def metadata(self) -> ObjectMeta | None: ...


R = TypeVar("R", bound=HasMetadata)


def object_meta(obj: HasMetadata) -> Meta:
    """The store's view of a lightkube object's metadata."""
    meta = obj.metadata
    if meta is None or not meta.name or not meta.uid or not meta.resourceVersion:
        raise KubernetesError(f"an API object without name, uid or resourceVersion: {meta!r}")
    return Meta(meta.namespace or "", meta.name, meta.uid, meta.resourceVersion)


@dataclass
class InformerStats:
    """Counters for logs and metrics: how often the informer had to start over."""

    lists: int = 0
    watches: int = 0
    bookmarks: int = 0
    gone: int = 0
    errors: int = 0


class Informer(Generic[R]):
    """List/watch of the objects of *kind* that *selection* selects."""

    def __init__(
        self,
        api: KubeApi,
        kind: Kind[R],
        selection: Selection | None = None,
        *,
        page_size: int = 500,
        watch_timeout: tuple[int, int] = (300, 600),
        backoff: Backoff | None = None,
    ) -> None:
        self.api = api
        self.kind = kind
        self.selection = selection or Selection()
        self.page_size = page_size
        # client-go's spread: each watch lasts a random 5-10 min, so watches of many agents
        # do not all end (and reconnect) together.
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.stats = InformerStats()
        self._store: Store[R] = Store(object_meta)
        self._woken = asyncio.Event()

    @property
    def resource_version(self) -> str | None:
        return self._store.resource_version

    def snapshot(self) -> dict[Key, R]:
        return self._store.snapshot()

    def _describe(self) -> str:
        parts = [self.kind.plural]
        if self.selection.namespace:
            parts.append(f"namespace={self.selection.namespace}")
        if self.selection.field_selector:
            parts.append(f"fields={self.selection.field_selector}")
        if self.selection.label_selector:
            parts.append(f"labels={self.selection.label_selector}")
        return " ".join(parts)

    async def events(self) -> collections.abc.AsyncIterator[Event[R] | Synced]:
        """The change stream, forever (cancel or close it to stop the informer)."""
        need_list = True
        while True:
            if need_list:
                try:
                    version, items = await self.api.list(self.kind, self.selection, self.page_size)
                except KubernetesError as exc:
                    await self._pause(f"list {self._describe()}", exc)
                    continue
                relist = self.stats.lists > 0
                self.stats.lists += 1
                for event in self._store.replace(items, version):
                    yield event
                yield Synced(version, relist)
                need_list = False
            since = self._store.resource_version
            assert since is not None  # set by the list above
            self.stats.watches += 1
            stream = self.api.watch(
                self.kind, self.selection, since, random.randint(*self.watch_timeout)
            )
            got_any = False
            try:
                # aclosing: a consumer that stops the informer closes the HTTP stream now.
                async with contextlib.aclosing(stream):
                    async for item in stream:
                        # The watch is established and healthy: the next failure starts over.
                        got_any = True
                        self.backoff.reset()
                        if isinstance(item, Bookmark):
                            self.stats.bookmarks += 1
                            self._store.bookmark(item.resource_version)
                            continue
                        for event in self._store.apply(item.type, item.obj):
                            yield event
            except ResourceVersionGone as exc:
                # Changes since our version are lost to compaction: only a list tells the
                # truth now, and the diff against the store yields what we missed.
                self.stats.gone += 1
                log.info("watch %s from %s: %s; relisting", self._describe(), since, exc)
                need_list = True
            except KubernetesError as exc:
                await self._pause(f"watch {self._describe()} from {since}", exc)
            else:
                # A watch the server ended after its timeout resumes at once from the version
                # of the last event or bookmark; one that ended without even a bookmark (a
                # server shutting down, a proxy cutting streams) waits first, or it would spin.
                if not got_any:
                    await self._pause(
                        f"watch {self._describe()} from {since}",
                        KubernetesError("the watch ended without any event"),
                    )

    def wake(self) -> None:
        """Retry now if the informer is waiting out a backoff delay (or at its next one).

        For a caller that knows the API answers again: the agent, when a CNI ADD names a pod
        its informer has not seen (the kubelet got it from the API, so the API is back), so
        the pod is not failed for up to the backoff cap after an API server outage. The
        schedule goes on: a retry that fails waits its next, longer delay.
        """
        self._woken.set()

    async def _pause(self, what: str, exc: Exception) -> None:
        self.stats.errors += 1
        delay = self.backoff.next_delay()
        # One line per attempt; the backoff bounds the rate at 1 per `cap` seconds (plus one
        # per wake()).
        log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), delay)
        self._woken.clear()
