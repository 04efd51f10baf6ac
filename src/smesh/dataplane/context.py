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

from smesh.dataplane.peers import PeerGate
from smesh.dataplane.records import NullObserver, Observer
from smesh.dataplane.relay import Scratch
from smesh.identity.spiffe import SpiffeId
from smesh.policy import Decision
from smesh.tunnel.window import GrowthBudget

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint a connect to a Service may go to: tunnelled if *identity* is set (the
    endpoint's pod is meshed), else straight (a non-meshed endpoint, with passthrough on)."""

    ip: IPAddress
    port: int
    identity: SpiffeId | None
    workload: str  # the endpoint's pod, for logs


@dataclass(frozen=True)
class Route:
    """Where a captured connect goes: through a tunnel to a meshed pod, straight, or nowhere.

    A connect to a Service's ClusterIP has *service* set (``namespace/name:port``) and, to
    go to its endpoints, *targets*: the endpoints to try in order (the first is the pick,
    the others are tried when one fails before the app's connection is carried). Without
    targets it goes to the ClusterIP itself (passthrough: kube-proxy's), is denied, or is
    refused (``refuse``: no endpoint can take it; *detail* says why).
    """

    kind: Literal["tunnel", "passthrough", "deny", "refuse"]
    identity: SpiffeId | None = None  # the identity the destination must prove (tunnel)
    workload: str = ""  # the destination pod, for logs
    service: str = ""
    targets: tuple[Target, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Limits:
    handshake_timeout: float = 10.0
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    idle_timeout: float = 0.0  # 0: none
    max_connections: int = 4096  # per pod, both directions together
    # Inbound connections still in their mTLS handshake: their own budget, never the cap
    # above (docs/dataplane.md, "Limits and budgets").
    inbound_handshake_timeout: float = 3.0  # never longer than handshake_timeout
    max_handshakes_per_source: int = 8
    max_handshakes: int = 128  # per pod
    # Each authenticated peer (identity, source address): inbound, and outbound per
    # destination pod (streams only: the pool opens carriers as streams need them).
    max_carriers_per_peer: int = 16
    max_streams_per_peer: int = 1024
    # A pod serves before its certificate arrives; a tunnel connection (outbound from the
    # app, inbound on the tunnel port) that comes first waits this long for it, then is
    # refused (fail closed: never plain text).
    certificate_wait: float = 5.0

    @property
    def inbound_deadline(self) -> float:
        """How long an inbound connection may take to prove its peer (the server side)."""
        return min(self.handshake_timeout, self.inbound_handshake_timeout)


class TlsProvider(Protocol):
    """The current TLS contexts of a workload (they change when certificates renew)."""

    def client_context(self, identity: SpiffeId) -> tuple[ssl.SSLContext, int]:
        """The outbound context and its generation (session caches key on it)."""
        ...

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext: ...

    def has_certificate(self, identity: SpiffeId) -> bool:
        """Whether the contexts of *identity* exist now (a new pod's may not, yet)."""
        ...

    async def wait_certificate(self, identity: SpiffeId, timeout: float) -> None:
        """Return once they do; raise CertificateNotReady after *timeout* seconds."""
        ...


class SocketFactory(Protocol):
    """Makes sockets inside the pod's network namespace (see smesh.linux.netns.Namespace)."""

    def socket(self, family: int = ..., kind: int = ...) -> socket.socket: ...


class SessionCache:
    """TLS sessions for resumption, per (destination, expected identity, contexts generation).

    Python refuses a session made by another SSLContext, so the generation of the client
    context is part of the key: a renewed certificate simply starts fresh sessions.

    Reading a session out of Python's ssl costs about as much as half a resumed handshake
    (it is serialized and parsed back, peer certificate included), so a session is taken
    only when the cache needs one: none yet, the handshake was not resumed (the old ticket
    was refused), or the cached ticket is getting old. TLS 1.3 tickets may be presented
    more than once, and the server's lifetime for them is hours, not minutes.
    """

    def __init__(self, capacity: int = 4096, refresh_after: float = 300.0) -> None:
        self.capacity = capacity
        self.refresh_after = refresh_after
        self._sessions: collections.OrderedDict[
            tuple[object, ...], tuple[ssl.SSLSession, float]
        ] = collections.OrderedDict()

    def get(self, key: tuple[object, ...]) -> ssl.SSLSession | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        self._sessions.move_to_end(key)
        return entry[0]

    def wants(self, key: tuple[object, ...], resumed: bool, now: float) -> bool:
        """Whether the session of a connection that just finished its handshake is needed."""
        entry = self._sessions.get(key)
        return not resumed or entry is None or now - entry[1] >= self.refresh_after

    def put(self, key: tuple[object, ...], session: ssl.SSLSession | None, now: float) -> None:
        if session is None or not session.has_ticket:
            return
        self._sessions[key] = (session, now)
        self._sessions.move_to_end(key)
        while len(self._sessions) > self.capacity:
            self._sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass(frozen=True)
class PodConfig:
    """One meshed pod, as its listeners see it."""

    name: str
    identity: SpiffeId
    addresses: tuple[IPAddress, ...]
    sockets: SocketFactory
    tunnel_port: int = 18001
    forbidden_ports: frozenset[int] = frozenset({15000, 15020, 18000, 18001})
    # The interface index (in the pod's namespace) that an IPv6 link-local destination is
    # on: capture keeps the address, not the app's scope id. 0: no single link (refused).
    link_scope: int = 0


def _no_services(ip: IPAddress, port: int, client: PodConfig) -> Route | None:
    return None


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
    windows: GrowthBudget = field(default_factory=GrowthBudget)
    # Inbound: the peer's trust domain, and its identity against its address (the agent's
    # registry). The default checks trust domains only: tests of the data plane alone.
    peers: PeerGate = field(default_factory=PeerGate)
    # A connect to a Service's ClusterIP (None: no Service there; *route* decides). The
    # client pod is for ClientIP session affinity.
    service_route: Callable[[IPAddress, int, PodConfig], Route | None] = _no_services
    # One more endpoint of a Service tried after the previous one failed (for a metric).
    service_retried: Callable[[], None] = lambda: None
