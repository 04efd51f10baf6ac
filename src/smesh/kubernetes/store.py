"""The informer's store: the objects it has seen, and the events that keep a consumer equal
to it (sans-IO).

Events are derived from the store, not copied from the wire: an ADDED for an object the
store already holds at that resourceVersion is a duplicate and is dropped, a MODIFIED for an
unknown object is an ADDED, a DELETED for an unknown object is nothing. So a consumer that
applies every event it is given holds exactly the store, whatever the API server resends
after a reconnect. A relist (after 410 Gone) is diffed against the store, which is how the
deletions made while the watch was down become DELETED events.

resourceVersions are opaque strings (the API conventions forbid ordering them), so they are
only compared for equality.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: (namespace, name); namespace is "" for cluster-scoped objects.
Key = tuple[str, str]


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class Meta:
    """What the store needs of an object's metadata."""

    namespace: str
    name: str
    uid: str
    resource_version: str

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Event(Generic[T]):
    """One change of the store: for DELETED, *obj* is the object's last known state."""

    type: EventType
    key: Key
    obj: T


@dataclass(frozen=True)
class Synced:
    """The store holds a complete list as of *resource_version* (after the first list and
    after every relist): a consumer may now act on absences, e.g. release what is gone."""

    resource_version: str
    relist: bool


class Store(Generic[T]):
    """Objects by key, the resourceVersion to resume a watch from, and the event logic."""

    def __init__(self, meta: Callable[[T], Meta]) -> None:
        self._meta = meta
        self._objects: dict[Key, tuple[Meta, T]] = {}
        self.resource_version: str | None = None

    def __len__(self) -> int:
        return len(self._objects)

    def snapshot(self) -> dict[Key, T]:
        """A copy of the current objects by key."""
        return {key: obj for key, (_, obj) in self._objects.items()}

    def get(self, key: Key) -> T | None:
        entry = self._objects.get(key)
        return None if entry is None else entry[1]

    def replace(self, items: Iterable[T], resource_version: str) -> list[Event[T]]:
        """Take a complete list as the new state; the events that turn the old into the new.

        Deletions come first (sorted by key), then additions and modifications in list order.
        An object whose uid changed under the same name was deleted and recreated while we
        were not watching: it gets a DELETED of the old and an ADDED of the new.
        """
        fresh: dict[Key, tuple[Meta, T]] = {}
        for obj in items:
            meta = self._meta(obj)
            fresh[meta.key] = (meta, obj)
        deleted: list[Event[T]] = []
        changed: list[Event[T]] = []
        for key in sorted(self._objects):
            old_meta, old = self._objects[key]
            new = fresh.get(key)
            if new is None or new[0].uid != old_meta.uid:
                deleted.append(Event(EventType.DELETED, key, old))
        for key, (meta, obj) in fresh.items():
            old_entry = self._objects.get(key)
            if old_entry is None or old_entry[0].uid != meta.uid:
                changed.append(Event(EventType.ADDED, key, obj))
            elif old_entry[0].resource_version != meta.resource_version:
                changed.append(Event(EventType.MODIFIED, key, obj))
        self._objects = fresh
        self.resource_version = resource_version
        return deleted + changed

    def apply(self, event_type: str, obj: T) -> list[Event[T]]:
        """Apply one watch event; the events a consumer must see (none for a duplicate)."""
        meta = self._meta(obj)
        self.resource_version = meta.resource_version
        old_entry = self._objects.get(meta.key)
        if event_type == EventType.DELETED:
            if old_entry is None:
                return []
            del self._objects[meta.key]
            return [Event(EventType.DELETED, meta.key, obj)]
        if event_type not in (EventType.ADDED, EventType.MODIFIED):
            raise ValueError(f"not an object event type: {event_type!r}")
        self._objects[meta.key] = (meta, obj)
        if old_entry is None:
            return [Event(EventType.ADDED, meta.key, obj)]
        old_meta, old = old_entry
        if old_meta.uid != meta.uid:
            return [
                Event(EventType.DELETED, meta.key, old),
                Event(EventType.ADDED, meta.key, obj),
            ]
        if old_meta.resource_version == meta.resource_version:
            return []
        return [Event(EventType.MODIFIED, meta.key, obj)]

    def bookmark(self, resource_version: str) -> None:
        """A BOOKMARK: nothing changed up to *resource_version*; resume from there."""
        self.resource_version = resource_version
