"""One pod's listeners: outbound (the capture target) and inbound (the tunnel port).

The listening sockets are made by the caller inside the pod's network namespace; the
endpoint accepts in batches on the event loop, caps concurrent connections, times out
idle ones, and can stop accepting (drain), hand its listeners over to another agent
process while it serves on what is open (:meth:`PodEndpoint.hand_over`), or close
everything.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from smesh.dataplane import flows
from smesh.dataplane.budget import Budget, Throttle, address_of
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
HANDED_OVER = "the node's agent handed over to a new one"


ShareKey = tuple[str, str]  # (identity, source address): what a fair share is counted for


def share_key(peer: Peer) -> ShareKey:
    return (str(peer.identity), str(peer.address))


class Connection:
    """The endpoint's entry for one app connection (or stream), from accept to close."""

    __slots__ = (
        "_endpoint",
        "active",
        "address",
        "carried",
        "peer",
        "proven",
        "record",
        "reported",
        "task",
    )

    def __init__(self, endpoint: PodEndpoint, record: ConnectionRecord) -> None:
        self._endpoint = endpoint
        self.record = record
        self.active: Relay | Splice | Stream | None = None
        self.task: asyncio.Task[None] | None = None
        self.reported = False  # observer told it opened
        self.carried = False  # it became a carrier of streams: not an app connection
        self.address = ""  # inbound: the source address, while it holds a handshake slot
        self.peer: ShareKey | None = None  # inbound: the peer whose stream share it counts in
        # An admitted CONNECT tunnel: its peer, checked again when the workloads change.
        self.proven: Peer | None = None

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
        # Inbound connections until their peer is authenticated and admitted; they count
        # against the handshake budget, not the pod's cap (docs/dataplane.md).
        self._unproven: set[Connection] = set()
        # Inbound carriers (outbound ones are the pool's), with the peer each was accepted
        # from (checked again when the workloads change; its share counted by share_key).
        self._carriers: dict[Carrier, Peer] = {}
        limits = services.limits
        self._handshakes: Budget[str, Connection] = Budget(
            limits.max_handshakes_per_source, limits.max_handshakes
        )
        self._peer_carriers: Budget[ShareKey, Carrier] = Budget(limits.max_carriers_per_peer)
        self._peer_streams: Budget[ShareKey, Connection] = Budget(limits.max_streams_per_peer)
        self.pool = CarrierPool(pod, services)
        self.draining = False
        self.handed_over = False  # another agent accepts on the listeners now
        self._cap_log = Throttle(TROUBLE_LOG_INTERVAL)
        self._budget_log = Throttle(TROUBLE_LOG_INTERVAL)
        self._cert_log = Throttle(TROUBLE_LOG_INTERVAL)
        self.turned_away: dict[str, int] = {}  # by reason, for the throttled log lines
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
        self._stop_listening()

    def hand_over(self) -> None:
        """Another agent process holds this pod's listening sockets now (passed to it, so
        nothing queued on them is lost): stop accepting on this process's copies, and
        serve every open connection and stream on until it ends on its own.

        Tunnel connections are retired, not drained: their clients are told GOAWAY
        (smesh-mux/2), open their next streams on a new connection, which the new agent
        accepts, and close this one once its last stream ended. OPENs already on their
        way are still served (``draining`` stays False), so no connect fails for it.
        """
        self.handed_over = True
        self._stop_listening()
        for carrier in list(self._carriers):
            carrier.go_away(HANDED_OVER)
        self.pool.retire(HANDED_OVER)

    def listening(self) -> list[tuple[str, socket.socket]]:
        return [(direction, sock) for sock, direction in self._listeners]

    def busy(self) -> bool:
        """Whether anything is still open: connections, handshakes, carriers either way."""
        return bool(self._connections or self._unproven or self._carriers or self.pool.carriers())

    def _stop_listening(self) -> None:
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
        for conn in [*self._connections, *self._unproven]:
            if conn.active is not None:
                conn.active.abort("the pod left the mesh", "reset")
            if conn.task is not None:
                conn.task.cancel()
        self.services.peers.unsubscribe(self._peers_changed)
        self.pool.close()
        for carrier in list(self._carriers):
            carrier.abort("the pod left the mesh")
        tasks = [c.task for c in [*self._connections, *self._unproven] if c.task is not None]
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
            if direction == "outbound" and self._load() >= self.services.limits.max_connections:
                self._at_cap(direction)
                abort(sock)
                continue
            record = ConnectionRecord(
                direction=direction,
                pod=self.pod.name,
                source=endpoint(addr),
                identity=str(self.pod.identity),
            )
            conn = Connection(self, record)
            if direction == "outbound":
                prepare(sock)
                self._connections.add(conn)
                conn.report_opened()
                self._outbound(sock, conn)
            elif self._start_handshake(conn, addr[0]):  # an app connection, or a carrier?
                prepare(sock)
                inbound = functools.partial(
                    flows.inbound, self.pod, self.services, sock, conn, self
                )
                conn.task = self._loop.create_task(self._set_up(inbound, sock, conn))
                conn.task.add_done_callback(functools.partial(self._never_started, sock, conn))
            else:
                abort(sock)

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

    # -- the handshake budget ------------------------------------------------------------

    def _start_handshake(self, conn: Connection, address: str) -> bool:
        """Whether an accepted inbound connection may start its handshake (a slot of the
        handshake budget, maybe taken from the source holding the most); False: reset it."""
        admission = self._handshakes.admit(address, conn)
        if not admission.admitted:
            if admission.refused == "per_key":
                why = f"{address} has {self._handshakes.per_key} handshakes under way"
                self._turn_away("inbound", "handshakes_per_source", why, "maxHandshakesPerSource")
            else:
                why = f"{len(self._handshakes)} handshakes are under way"
                self._turn_away("inbound", "handshakes_total", why, "maxHandshakesPerPod")
            return False
        conn.address = address
        self._unproven.add(conn)
        victim = admission.evicted
        if victim is not None:  # the heaviest source's oldest handshake makes room
            victim.address = ""
            why = f"{len(self._handshakes)} handshakes are under way; {address} had fewer"
            self._turn_away("inbound", "handshakes_total", why, "maxHandshakesPerPod")
            victim.record.finish("reset", "handshake dropped to make room for another source")
            if victim.task is not None:
                victim.task.cancel()
        return True

    def _handshake_done(self, conn: Connection) -> ShareKey:
        """The connection's handshake slot is free again; the peer it proved to be."""
        if conn.address:
            self._handshakes.release(conn.address, conn)
        peer = (conn.record.peer_identity, address_of(conn.record.source))
        conn.address = ""
        return peer

    # -- the flows' Hooks ----------------------------------------------------------------

    def carry(self, tracked: flows.Tracked, carrier: Carrier, peer: Peer) -> bool:
        assert isinstance(tracked, Connection)
        self._handshake_done(tracked)
        if self.draining:  # a handshake under way when the pod began to leave
            tracked.record.finish("refused", f"{self.pod.name} is leaving the mesh")
            return False
        key = share_key(peer)
        admission = self._peer_carriers.admit(key, carrier, evictable=_idle)
        if not admission.admitted:
            limit = self._peer_carriers.per_key
            why = f"{key[0]} from {key[1]} holds its share of {limit} carriers, none idle"
            self._turn_away("inbound", "peer_carriers", why, "maxCarriersPerPeer")
            tracked.record.finish("refused", why)
            return False
        if admission.evicted is not None:
            admission.evicted.close()  # an idle carrier of the same peer: it has a new one
        if self._load() >= self.services.limits.max_connections and not self._close_idle():
            self._peer_carriers.release(key, carrier)
            self._at_cap("inbound")
            tracked.record.finish("refused", "the pod is at its connection cap")
            return False
        tracked.carried = True
        self._unproven.discard(tracked)
        self._carriers[carrier] = peer
        carrier.on_closed = self._carrier_closed
        self.services.observer.carriers("server", 1)
        if self.handed_over:  # its handshake began before the hand-over: retire it too
            self._loop.call_soon(carrier.go_away, HANDED_OVER)  # after start(), in order
        if self._carrier_sweep is None:
            self._carrier_sweep = self._loop.call_later(IDLE_CLOSE / 4, self._sweep_carriers)
        return True

    def admit(self, tracked: flows.Tracked, proven: Peer) -> str | None:
        assert isinstance(tracked, Connection)
        peer = self._handshake_done(tracked)
        if self.draining:
            return f"{self.pod.name} is leaving the mesh"
        if self._load() >= self.services.limits.max_connections:
            self._at_cap("inbound")
            return f"{self.pod.name} is at its connection cap"
        if not self._peer_streams.admit(peer, tracked).admitted:
            return self._stream_share(peer)
        tracked.peer = peer
        tracked.proven = proven
        self._unproven.discard(tracked)
        self._connections.add(tracked)
        return None

    def no_certificate(self, direction: str, why: str) -> None:
        assert direction in ("outbound", "inbound")
        self.services.observer.turned_away(direction, "no_certificate")
        self.turned_away["no_certificate"] = self.turned_away.get("no_certificate", 0) + 1
        if self._cert_log.ready():
            log.warning(
                "pod %s refused an %s connection: %s (%d so far)",
                self.pod.name,
                direction,
                why,
                self.turned_away["no_certificate"],
            )

    def _stream_share(self, peer: ShareKey) -> str:
        limit = self._peer_streams.per_key
        why = f"{peer[0]} from {peer[1]} holds its share of {limit} connections"
        self._turn_away("inbound", "peer_streams", why, "maxStreamsPerPeer")
        return why

    def _close_idle(self) -> bool:
        """Make room at the cap by closing an idle carrier of the peer that holds the most."""
        idle = [(peer, c) for c, peer in self._carriers.items() if _idle(c)]
        if not idle:
            return False
        counts = self._peer_carriers.count
        _peer, carrier = max(idle, key=lambda pc: (counts(share_key(pc[0])), -pc[1].last_active))
        carrier.close()
        return True

    def _load(self) -> int:
        """What a new connection counts against the pod's cap: connections, and carriers,
        each a socket and TLS state whether or not it carries streams. Inbound connections
        still in their handshake do not count: they have a budget of their own."""
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
        peer = self._carriers.pop(carrier, None)
        if peer is not None:
            self._peer_carriers.release(share_key(peer), carrier)
            self.services.observer.carriers("server", -1)

    def _peers_changed(self) -> None:
        """The workloads changed: a carrier or ``CONNECT`` tunnel whose peer no longer matches
        its address (its pod is gone, or the address is another pod's now) is closed, a
        carrier with all its streams. Without idle timeout a tunnel would otherwise outlive
        the pod whose certificate opened it."""
        gate = self.services.peers
        for carrier, peer in list(self._carriers.items()):
            refusal = gate.check(self.pod.identity, peer)
            if refusal is not None:
                gate.refused(refusal, peer, self.pod.name, "on an open tunnel connection")
                carrier.abort(f"peer refused: {refusal}")
        for conn in list(self._connections):
            if conn.proven is None or conn.active is None:
                continue  # not a CONNECT tunnel, or not relaying yet (its request was checked)
            refusal = gate.check(self.pod.identity, conn.proven)
            if refusal is not None:
                gate.refused(refusal, conn.proven, self.pod.name, "on an open CONNECT tunnel")
                conn.active.abort(f"peer refused: {refusal}")

    def track(self, record: ConnectionRecord) -> Connection | None:
        if self.draining or len(self._connections) >= self.services.limits.max_connections:
            if not self.draining:
                self._at_cap("inbound")
            return None
        conn = Connection(self, record)
        peer = (record.peer_identity, address_of(record.source))
        if not self._peer_streams.admit(peer, conn).admitted:
            self._stream_share(peer)
            return None
        conn.peer = peer
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

    def _never_started(self, sock: socket.socket, conn: Connection, _task: object) -> None:
        """A task cancelled before its first step (a handshake dropped for another source
        in the same batch of accepts) runs no ``finally``: close its socket here."""
        if conn in self._unproven and conn.task is not None:
            conn.task = None
            abort(sock)
            self._closed(conn)

    def _closed(self, conn: Connection) -> None:
        if conn in self._unproven:  # its handshake failed, or its peer was turned away
            self._unproven.discard(conn)
            self._handshake_done(conn)
            conn.report_opened()
            self.services.observer.closed(conn.record)
        elif conn in self._connections:
            self._connections.discard(conn)
            if conn.peer is not None:
                self._peer_streams.release(conn.peer, conn)
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

    def _turn_away(self, direction: Direction, reason: str, why: str, key: str) -> None:
        """Count a connection refused by a budget or share, with a throttled log line."""
        self.services.observer.turned_away(direction, reason)
        self.turned_away[reason] = self.turned_away.get(reason, 0) + 1
        if self._budget_log.ready():
            log.warning(
                "pod %s turned away an %s connection: %s (%d so far for %s; limits.%s)",
                self.pod.name,
                direction,
                why,
                self.turned_away[reason],
                reason,
                key,
            )

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


def _idle(carrier: Carrier) -> bool:
    """A carrier that could be closed without ending anyone's connection."""
    return not carrier.streams and not carrier.closed
