"""Who may hold how much of a pod's listener: the accounting, without sockets or a loop.

Two kinds of holder share a pod's listener, and neither may lock the other out:

* connections that have not finished the mTLS handshake: anyone who can reach the tunnel
  port can open them, so they get a small budget of their own per source address and per
  pod (:class:`Budget` with a total, which makes room for a light source by dropping the
  heaviest source's oldest handshake);
* authenticated peers, each an (identity, source address): at most a share of carriers
  and of streams each (:class:`Budget` without a total; a peer at its carrier share makes
  room by closing one of its own idle carriers first).

Items are opaque to this module: the endpoint passes its connections and carriers in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T", bound=Hashable)

Refusal = Literal["per_key", "total"]


@dataclass(frozen=True)
class Admission(Generic[T]):
    """What :meth:`Budget.admit` decided: taken (maybe at another item's cost), or refused."""

    refused: Refusal | None = None
    evicted: T | None = None  # to be closed by the caller: it no longer counts

    @property
    def admitted(self) -> bool:
        return self.refused is None


class Budget(Generic[K, T]):
    """Items held per key: at most *per_key* each, and at most *total* together.

    When the total is full, a key holding fewer items than the heaviest key gets in at the
    heaviest key's cost: its oldest item is evicted (among equally heavy keys, the one
    that has held items the longest). A flood from a few keys cannot keep out a key that
    needs one slot now and then, and a flood from many keys of one slot each wears out
    its own oldest slots first, not the newcomer's that finishes in milliseconds.
    """

    def __init__(self, per_key: int, total: int | None = None) -> None:
        if per_key < 1 or (total is not None and total < 1):
            raise ValueError(f"a budget needs room for one item ({per_key=}, {total=})")
        self.per_key = per_key
        self.total = total
        self._held: dict[K, dict[T, None]] = {}  # insertion ordered: oldest first
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def count(self, key: K) -> int:
        held = self._held.get(key)
        return len(held) if held is not None else 0

    def items(self, key: K) -> list[T]:
        """The key's items, oldest first."""
        return list(self._held.get(key, ()))

    def keys(self) -> list[K]:
        return list(self._held)

    def admit(self, key: K, item: T, evictable: Callable[[T], bool] | None = None) -> Admission[T]:
        """Count *item* against *key*, if there is room.

        A key at its own limit gets in only by giving up its oldest item that *evictable*
        accepts (an idle carrier); a full total, at the heaviest key's cost (see above).
        """
        evicted: T | None = None
        count = self.count(key)
        if count >= self.per_key:
            victim = self._oldest(key, evictable) if evictable is not None else None
            if victim is None:
                return Admission(refused="per_key")
            self.release(key, victim)
            evicted = victim
        elif self.total is not None and self._size >= self.total:
            heaviest = max(self._held, key=self.count)
            if self.count(heaviest) <= count:
                return Admission(refused="total")
            victim = next(iter(self._held[heaviest]))
            self.release(heaviest, victim)
            evicted = victim
        self._held.setdefault(key, {})[item] = None
        self._size += 1
        return Admission(evicted=evicted)

    def release(self, key: K, item: T) -> bool:
        """Stop counting *item*; False if it was not counted (released twice, evicted)."""
        held = self._held.get(key)
        if held is None or item not in held:
            return False
        del held[item]
        self._size -= 1
        if not held:
            del self._held[key]
        return True

    def _oldest(self, key: K, evictable: Callable[[T], bool]) -> T | None:
        return next((item for item in self._held.get(key, ()) if evictable(item)), None)


def address_of(source: str) -> str:
    """The address part of a record's ``source`` (``10.0.0.1:5000``, ``[fd00::1]:5000``)."""
    host, sep, _port = source.rpartition(":")
    if not sep:
        return source
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class Throttle:
    """Lets through one event per *interval* seconds: a log line for a condition that lasts."""

    __slots__ = ("_interval", "_last")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = -interval

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last < self._interval:
            return False
        self._last = now
        return True
