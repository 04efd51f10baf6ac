"""What a pod's listeners need from the rest of the agent, as plain values and callables.

The data plane does not know how routes, certificates or policy are made; the agent
passes them in here. Tests pass in their own.
"""

from __future__ import annotations

import collections
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from smesh.dataplane.records import NullObserver, Observer
from smesh.dataplane.relay import Scratch
from smesh.identity.spiffe import SpiffeId
from smesh.policy import Decision

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Route:
    """Where a captured connect goes: through a tunnel to a meshed pod, straight, or nowhere."""

    kind: Literal["tunnel", "passthrough", "deny"]
    identity: SpiffeId | None = None  # the identity the destination must prove (tunnel)
    workload: str = ""  # the destination pod, for logs


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    idle_timeout: float = 0.0  # 0: none
    max_connections: int = 4096  # per pod, both directions together


class TlsProvider(Protocol):
    """The current TLS contexts of a workload (they change when certificates renew)."""

    def client_context(self, identity: SpiffeId) -> tuple[ssl.SSLContext, int]:
        """The outbound context and its generation (session caches key on it)."""
        ...

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext: ...


class SocketFactory(Protocol):
    """Makes sockets inside the pod's network namespace (see smesh.linux.netns.Namespace)."""

    def socket(self, family: int = ..., kind: int = ...) -> socket.socket: ...


class SessionCache:
    """TLS sessions for resumption, per (destination, expected identity, contexts generation).

    Python refuses a session made by another SSLContext, so the generation of the client
    context is part of the key: a renewed certificate simply starts fresh sessions.

    The servers keep sessions themselves (stateful TLS 1.3 tickets, see
    :func:`smesh.identity.tls.server_context`), and such a ticket is good for one
    resumption. So each key holds a small pool: a connection takes a session out, and puts
    the one its own handshake received back in. Parallel connections to one destination
    each find their own ticket once the pool has grown to their number.
    """

    def __init__(self, capacity: int = 4096, per_key: int = 16, max_age: float = 3600.0) -> None:
        self.capacity = capacity  # keys
        self.per_key = per_key
        self.max_age = max_age  # well inside the servers' session lifetime (2 h)
        self._pools: collections.OrderedDict[
            tuple[object, ...], collections.deque[tuple[ssl.SSLSession, float]]
        ] = collections.OrderedDict()

    def take(self, key: tuple[object, ...], now: float) -> ssl.SSLSession | None:
        """A session to offer for *key*, removed from the cache (tickets are single use)."""
        pool = self._pools.get(key)
        while pool:
            session, stored = pool.pop()  # the newest first
            if now - stored < self.max_age:
                if not pool:
                    del self._pools[key]
                return session
        self._pools.pop(key, None)
        return None

    def put(self, key: tuple[object, ...], session: ssl.SSLSession | None, now: float) -> None:
        if session is None or not session.has_ticket:
            return
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = collections.deque(maxlen=self.per_key)
        pool.append((session, now))
        self._pools.move_to_end(key)
        while len(self._pools) > self.capacity:
            self._pools.popitem(last=False)

    def __len__(self) -> int:
        return sum(len(pool) for pool in self._pools.values())


@dataclass(frozen=True)
class PodConfig:
    """One meshed pod, as its listeners see it."""

    name: str
    identity: SpiffeId
    addresses: tuple[IPAddress, ...]
    sockets: SocketFactory
    tunnel_port: int = 18001
    forbidden_ports: frozenset[int] = frozenset({15000, 18000, 18001})


@dataclass
class Services:
    """Node-wide parts shared by every pod's listeners."""

    tls: TlsProvider
    route: Callable[[IPAddress, int], Route]
    authorize: Callable[[SpiffeId, PodConfig, int], Decision]
    original_destination: Callable[[socket.socket], tuple[IPAddress, int]]
    observer: Observer = field(default_factory=NullObserver)
    limits: Limits = field(default_factory=Limits)
    scratch: Scratch = field(default_factory=Scratch)
    sessions: SessionCache = field(default_factory=SessionCache)
