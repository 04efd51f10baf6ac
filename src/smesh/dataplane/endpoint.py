"""One pod's listeners: outbound (the capture target) and inbound (the tunnel port).

The listening sockets are made by the caller inside the pod's network namespace; the
endpoint accepts in batches on the event loop, caps concurrent connections, times out
idle ones, and can stop accepting (drain) or close everything.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from smesh.dataplane import flows
from smesh.dataplane.carrier import Carrier, Stream
from smesh.dataplane.context import PodConfig, Services
from smesh.dataplane.peers import Peer
from smesh.dataplane.pool import IDLE_CLOSE, CarrierPool
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Relay
from smesh.dataplane.sockets import abort, endpoint, prepare
from smesh.dataplane.splice import Splice

log = logging.getLogger("smesh.dataplane")

Direction = Literal["outbound", "inbound"]
ACCEPT_BATCH = 64
TROUBLE_LOG_INTERVAL = 5.0  # a pod turning connections away logs this often at most
# An accept that fails for want of resources (descriptors, memory) leaves the connection
# in the backlog and the listener readable: retrying at once would spin the loop. The
# listener rests this long instead, and the backlog holds the connections meanwhile.
ACCEPT_RETRY_DELAY = 0.25
# A client closes the carriers it no longer uses after IDLE_CLOSE; one that does not (gone,
# or hostile) would hold the server side's socket and TLS state for good.
SERVER_IDLE_CLOSE = 2 * IDLE_CLOSE
_GONE_BEFORE_ACCEPT = (errno.ECONNABORTED, errno.EPROTO)


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


class Connection:
    """The endpoint's entry for one app connection (or stream), from accept to close."""

    __slots__ = ("_endpoint", "active", "carried", "record", "reported", "task")

    def __init__(self, endpoint: PodEndpoint, record: ConnectionRecord) -> None:
        self._endpoint = endpoint
        self.record = record
        self.active: Relay | Splice | Stream | None = None
        self.task: asyncio.Task[None] | None = None
        self.reported = False  # observer told it opened
        self.carried = False  # it became a carrier of streams: not an app connection

    def relay_done(self, relay: object) -> None:
        self._endpoint._closed(self)

    def report_opened(self) -> None:
        if not self.reported:
            self.reported = True
            self._endpoint.services.observer.opened(self.record)


class PodEndpoint:
    def __init__(self, pod: PodConfig, services: Services) -> None:
        self.pod = pod
        self.services = services
        self._loop = asyncio.get_running_loop()
        self._listeners: list[tuple[socket.socket, Direction]] = []
        self._connections: set[Connection] = set()
        # inbound ones, with the peer each was accepted from; outbound ones are the pool's
        self._carriers: dict[Carrier, Peer] = {}
        self.pool = CarrierPool(pod, services)
        self.draining = False
        self._cap_log = Throttle(TROUBLE_LOG_INTERVAL)
        self._accept_log = Throttle(TROUBLE_LOG_INTERVAL)
        self._sweeper: asyncio.Task[None] | None = None
        self._carrier_sweep: asyncio.TimerHandle | None = None
        self._resting: dict[socket.socket, asyncio.TimerHandle] = {}
        self.refused_at_cap = 0
        self.accept_failures = 0
        services.peers.subscribe(self._peers_changed)

    # -- the agent's PodListeners interface -------------------------------------------

    def start(self, outbound: list[socket.socket], inbound: list[socket.socket]) -> None:
        """Serve on listening sockets already bound inside the pod's namespace."""
        pairs: list[tuple[socket.socket, Direction]] = [
            *((s, "outbound") for s in outbound),
            *((s, "inbound") for s in inbound),
        ]
        for sock, direction in pairs:
            sock.setblocking(False)
            self._listeners.append((sock, direction))
            self._loop.add_reader(sock.fileno(), self._accept, sock, direction)
        if self.services.limits.idle_timeout > 0:
            self._sweeper = self._loop.create_task(self._sweep_idle())

    def stop_accepting(self) -> None:
        self.draining = True  # carriers refuse new streams from now on
        for sock, _direction in self._listeners:
            resting = self._resting.pop(sock, None)
            if resting is not None:
                resting.cancel()
            else:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()

    def active_connections(self) -> int:
        return len(self._connections)

    def connections(self) -> list[dict[str, Any]]:
        return [
            c.record.as_dict() | {"pending_bytes": c.active.pending_bytes() if c.active else 0}
            for c in self._connections
        ]

    def pending_bytes(self) -> int:
        """What the relays hold in memory now (bounded by backpressure)."""
        return sum(c.active.pending_bytes() for c in self._connections if c.active is not None)

    async def close(self) -> None:
        """Stop accepting and reset every open connection."""
        self.stop_accepting()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._carrier_sweep is not None:
            self._carrier_sweep.cancel()
        for conn in list(self._connections):
            if conn.active is not None:
                conn.active.abort("the pod left the mesh", "reset")
            if conn.task is not None:
                conn.task.cancel()
        self.services.peers.unsubscribe(self._peers_changed)
        self.pool.close()
        for carrier in list(self._carriers):
            carrier.abort("the pod left the mesh")
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- accepting ---------------------------------------------------------------------

    def _accept(self, listener: socket.socket, direction: Direction) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _GONE_BEFORE_ACCEPT:
                    continue
                self._rest(listener, direction, exc)
                return
            if self._load() >= self.services.limits.max_connections:
                self._at_cap(direction)
                abort(sock)
                continue
            prepare(sock)
            record = ConnectionRecord(
                direction=direction,
                pod=self.pod.name,
                source=endpoint(addr),
                identity=str(self.pod.identity),
            )
            conn = Connection(self, record)
            self._connections.add(conn)
            if direction == "outbound":
                conn.report_opened()
                self._outbound(sock, conn)
            else:  # an app connection, or a carrier of streams?
                inbound = functools.partial(
                    flows.inbound, self.pod, self.services, sock, conn, self
                )
                conn.task = self._loop.create_task(self._set_up(inbound, sock, conn))

    def _outbound(self, sock: socket.socket, conn: Connection) -> None:
        """Most outbound connections are set up right here; the others get a task."""
        try:
            later = flows.outbound(self.pod, self.services, sock, conn, self)
        except Exception:  # a bug must not take the listener down
            log.exception("unexpected error setting up a connection of %s", self.pod.name)
            conn.record.finish("error", "internal error")
            abort(sock)
            later = None
        if later is not None:
            conn.task = self._loop.create_task(self._set_up(later, sock, conn))
        elif conn.active is None:
            self._closed(conn)

    # -- the flows' Hooks ----------------------------------------------------------------

    def carry(self, tracked: flows.Tracked, carrier: Carrier, peer: Peer) -> None:
        assert isinstance(tracked, Connection)
        tracked.carried = True
        self._connections.discard(tracked)
        self._carriers[carrier] = peer
        carrier.on_closed = self._carrier_closed
        self.services.observer.carriers("server", 1)
        if self._carrier_sweep is None:
            self._carrier_sweep = self._loop.call_later(IDLE_CLOSE / 4, self._sweep_carriers)

    def _load(self) -> int:
        """What a new TCP connection counts against the pod's cap: connections, and
        carriers, each a socket and TLS state whether or not it carries streams."""
        return len(self._connections) + len(self._carriers)

    def _sweep_carriers(self) -> None:
        self._carrier_sweep = None
        deadline = self._loop.time() - SERVER_IDLE_CLOSE
        for carrier in list(self._carriers):
            if not carrier.streams and carrier.last_active < deadline:
                carrier.close()
        if self._carriers:
            self._carrier_sweep = self._loop.call_later(IDLE_CLOSE / 4, self._sweep_carriers)

    def _carrier_closed(self, carrier: Carrier) -> None:
        if self._carriers.pop(carrier, None) is not None:
            self.services.observer.carriers("server", -1)

    def _peers_changed(self) -> None:
        """The workloads changed: a carrier whose peer no longer matches its address (its pod
        is gone, or the address is another pod's now) is closed, streams and all."""
        gate = self.services.peers
        for carrier, peer in list(self._carriers.items()):
            refusal = gate.check(self.pod.identity, peer)
            if refusal is not None:
                gate.refused(refusal, peer, self.pod.name, "on an open tunnel connection")
                carrier.abort(f"peer refused: {refusal}")

    def track(self, record: ConnectionRecord) -> Connection | None:
        if self.draining or len(self._connections) >= self.services.limits.max_connections:
            if not self.draining:
                self._at_cap("inbound")
            return None
        conn = Connection(self, record)
        self._connections.add(conn)
        conn.report_opened()
        return conn

    async def _set_up(
        self, flow: Callable[[], Awaitable[None]], sock: socket.socket, conn: Connection
    ) -> None:
        try:
            await flow()
        except asyncio.CancelledError:
            conn.record.finish("reset", "the pod left the mesh")
            abort(sock)
        except Exception:  # a bug must not take the listener down
            log.exception("unexpected error setting up a connection of %s", self.pod.name)
            conn.record.finish("error", "internal error")
            abort(sock)
        finally:
            conn.task = None
        if conn.active is None and not conn.carried:
            self._closed(conn)

    def _closed(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            conn.active = None
            conn.report_opened()  # one that failed before it was known counts too
            self.services.observer.closed(conn.record)

    def _rest(self, listener: socket.socket, direction: Direction, exc: OSError) -> None:
        self.accept_failures += 1
        self.services.observer.turned_away(direction, "accept_failed")
        if self._accept_log.ready():
            log.error(
                "pod %s cannot accept %s connections: %s; they wait in the backlog, "
                "retrying every %gs (%d failed accepts so far)",
                self.pod.name,
                direction,
                exc.strerror or exc,
                ACCEPT_RETRY_DELAY,
                self.accept_failures,
            )
        self._loop.remove_reader(listener.fileno())
        self._resting[listener] = self._loop.call_later(
            ACCEPT_RETRY_DELAY, self._wake, listener, direction
        )

    def _wake(self, listener: socket.socket, direction: Direction) -> None:
        del self._resting[listener]
        self._loop.add_reader(listener.fileno(), self._accept, listener, direction)

    def _at_cap(self, direction: Direction) -> None:
        self.refused_at_cap += 1
        self.services.observer.turned_away(direction, "at_cap")
        if self._cap_log.ready():
            log.warning(
                "pod %s is at its cap of %d concurrent connections: resetting new %s connections "
                "(%d so far; raise limits.maxConnectionsPerPod if this is expected load)",
                self.pod.name,
                self.services.limits.max_connections,
                direction,
                self.refused_at_cap,
            )

    async def _sweep_idle(self) -> None:
        idle = self.services.limits.idle_timeout
        while True:
            await asyncio.sleep(max(idle / 4, 0.05))
            deadline = self._loop.time() - idle
            for conn in list(self._connections):
                if conn.active is not None and conn.active.last_active < deadline:
                    conn.active.abort(f"idle for more than {idle:g}s", "timeout")
