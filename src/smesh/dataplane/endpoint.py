"""One pod's listeners: outbound (the capture target) and inbound (the tunnel port).

The listening sockets are made by the caller inside the pod's network namespace; the
endpoint accepts in batches on the event loop, caps concurrent connections, times out
idle ones, and can stop accepting (drain) or close everything.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Literal

from smesh.dataplane import flows
from smesh.dataplane.context import PodConfig, Services
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Relay
from smesh.dataplane.sockets import abort, endpoint, prepare
from smesh.dataplane.splice import Splice

log = logging.getLogger("smesh.dataplane")

Direction = Literal["outbound", "inbound"]
ACCEPT_BATCH = 64
CAP_LOG_INTERVAL = 5.0


class Connection:
    """The endpoint's entry for one connection, from accept to close."""

    __slots__ = ("_endpoint", "active", "record", "task")

    def __init__(self, endpoint: PodEndpoint, record: ConnectionRecord) -> None:
        self._endpoint = endpoint
        self.record = record
        self.active: Relay | Splice | None = None
        self.task: asyncio.Task[None] | None = None

    def relay_done(self, relay: Relay | Splice) -> None:
        self._endpoint._closed(self)


class PodEndpoint:
    def __init__(self, pod: PodConfig, services: Services) -> None:
        self.pod = pod
        self.services = services
        self._loop = asyncio.get_running_loop()
        self._listeners: list[tuple[socket.socket, Direction]] = []
        self._connections: set[Connection] = set()
        self._last_cap_log = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self.refused_at_cap = 0

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
        for sock, _direction in self._listeners:
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
        for conn in list(self._connections):
            if conn.active is not None:
                conn.active.abort("the pod left the mesh", "reset")
            elif conn.task is not None:
                conn.task.cancel()
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
                log.error("accept failed on %s: %s", self.pod.name, exc)
                return
            if len(self._connections) >= self.services.limits.max_connections:
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
            self.services.observer.opened(record)
            flow = flows.outbound if direction == "outbound" else flows.inbound
            conn.task = self._loop.create_task(self._set_up(flow, sock, conn))

    async def _set_up(self, flow: Any, sock: socket.socket, conn: Connection) -> None:
        try:
            await flow(self.pod, self.services, sock, conn)
        except asyncio.CancelledError:
            conn.record.finish("reset", "the pod left the mesh")
            abort(sock)
        except Exception:  # a bug must not take the listener down
            log.exception("unexpected error setting up a connection of %s", self.pod.name)
            conn.record.finish("error", "internal error")
            abort(sock)
        finally:
            conn.task = None
        if conn.active is None:
            self._closed(conn)

    def _closed(self, conn: Connection) -> None:
        if conn in self._connections:
            self._connections.discard(conn)
            conn.active = None
            self.services.observer.closed(conn.record)

    def _at_cap(self, direction: str) -> None:
        self.refused_at_cap += 1
        now = time.monotonic()
        if now - self._last_cap_log >= CAP_LOG_INTERVAL:
            self._last_cap_log = now
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
