"""Two pods' data planes on loopback, with real TLS, driven by real blocking apps.

The client pod's outbound listener and the server pod's inbound listener run on an event
loop in a background thread. The server pod "lives" at 127.0.0.3, where test servers
listen; the capture step is replaced by telling the outbound side the destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import resource
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from smesh.dataplane.context import IPAddress, Limits, PodConfig, Route, Services
from smesh.dataplane.endpoint import PodEndpoint
from smesh.dataplane.loop import LoopKind, loop_factory
from smesh.dataplane.peers import PeerGate
from smesh.dataplane.records import ConnectionRecord
from smesh.identity import tls
from smesh.identity.ca import CertificateAuthority
from smesh.identity.manager import CertificateNotReady
from smesh.identity.spiffe import SpiffeId
from smesh.policy import Decision, DestinationWorkload, Policy, decide
from smesh.tunnel.window import GrowthBudget

T = TypeVar("T")
CLIENT_ID = SpiffeId.for_workload("default", "pod-1")
SERVER_ID = SpiffeId.for_workload("default", "pod-3")
SERVER_IP = ipaddress.ip_address("127.0.0.3")


@contextlib.contextmanager
def descriptors_left(count: int) -> Iterator[None]:
    """Let this process open only *count* more file descriptors, as a busy node might.

    Holes below the highest open descriptor are filled first, so the limit counts exactly.
    The limit is the whole process's: keep the window short, with no other thread at work.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        while True:
            fd = os.open("/dev/null", os.O_RDONLY)
            if fd > highest:
                os.close(fd)
                break
            held.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd + count, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in held:
            os.close(fd)


class HostSockets:
    """A pod's socket factory; while *exhausted*, the pod is out of file descriptors.

    Only the socket the pod's agent makes meets the limit (a real EMFILE from the
    kernel), so nothing else in this process is squeezed.
    """

    def __init__(self) -> None:
        self.exhausted = False
        self.send_buffer = 0  # SO_SNDBUF of the sockets made from now on (0: the default)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        if not self.exhausted:
            sock = socket.socket(family, kind)
        else:
            with descriptors_left(0):
                sock = socket.socket(family, kind)
        if self.send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        return sock


class StaticTls:
    """Fixed contexts; an identity in *withheld* has none yet (its signer has not answered)."""

    def __init__(self, contexts: dict[SpiffeId, tuple[ssl.SSLContext, ssl.SSLContext]]) -> None:
        self.contexts = contexts
        self.withheld: set[SpiffeId] = set()

    def client_context(self, identity: SpiffeId) -> tuple[ssl.SSLContext, int]:
        assert identity not in self.withheld, f"{identity}'s contexts taken before they came"
        return self.contexts[identity][1], 1

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        assert identity not in self.withheld, f"{identity}'s contexts taken before they came"
        return self.contexts[identity][0]

    def has_certificate(self, identity: SpiffeId) -> bool:
        return identity in self.contexts and identity not in self.withheld

    async def wait_certificate(self, identity: SpiffeId, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.has_certificate(identity):
            if asyncio.get_running_loop().time() >= deadline:
                raise CertificateNotReady(f"no certificate for {identity} after {timeout:g} s")
            await asyncio.sleep(0.01)


@dataclass
class Recorder:
    records: list[ConnectionRecord] = field(default_factory=list)
    handshakes: list[tuple[str, bool]] = field(default_factory=list)
    open_carriers: dict[str, int] = field(default_factory=dict)
    away: list[tuple[str, str]] = field(default_factory=list)  # connections turned away
    closed_event: threading.Condition = field(default_factory=threading.Condition)

    def opened(self, record: ConnectionRecord) -> None:
        pass

    def closed(self, record: ConnectionRecord) -> None:
        with self.closed_event:
            self.records.append(record)
            self.closed_event.notify_all()

    def handshake(self, side: str, seconds: float, resumed: bool) -> None:
        self.handshakes.append((side, resumed))

    def tunnel_ready(self, seconds: float) -> None:
        pass

    def carriers(self, side: str, delta: int) -> None:
        self.open_carriers[side] = self.open_carriers.get(side, 0) + delta

    def turned_away(self, direction: str, reason: str) -> None:
        self.away.append((direction, reason))

    def wait_for(
        self, predicate: Callable[[list[ConnectionRecord]], bool], timeout: float = 10
    ) -> list[ConnectionRecord]:
        with self.closed_event:
            if not self.closed_event.wait_for(lambda: predicate(self.records), timeout):
                raise AssertionError(
                    f"records never matched; got {[r.as_dict() for r in self.records]}"
                )
            return list(self.records)


class Mesh:
    """Client pod (outbound) and server pod (inbound) data planes on one event loop."""

    def __init__(
        self,
        tmp: Path,
        limits: Limits | None = None,
        policy: Policy | None = None,
        loop: LoopKind = "uvloop",
        windows: GrowthBudget | None = None,
        *,
        peers: PeerGate | None = None,
    ) -> None:
        self.windows = windows or GrowthBudget()
        self.peers = peers or PeerGate()
        self.ca = CertificateAuthority.init(tmp / "ca")
        self.other_ca = CertificateAuthority.init(tmp / "other-ca")
        self.limits = limits or Limits(handshake_timeout=2, connect_timeout=2, request_timeout=2)
        self.policy = policy or Policy()
        self.recorder = Recorder()
        self.destination: tuple[IPAddress, int] = (SERVER_IP, 1)
        self.route = Route("tunnel", SERVER_ID, "pod-3")
        bundle = self.ca.bundle()
        contexts = {}
        for identity in (CLIENT_ID, SERVER_ID):
            cred = self.ca.issue_credential(str(identity), dt.timedelta(hours=1), "node")
            contexts[identity] = (
                tls.server_context(cred, bundle),
                tls.client_context(cred, bundle),
            )
        self.tls = StaticTls(contexts)
        self.loop = loop_factory(loop)()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start)

    def call(self, fn: Callable[[], T]) -> T:
        """Run *fn* on the event loop thread and return its result."""
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the test
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(30)

    def _authorize(self, peer: SpiffeId, pod: PodConfig, port: int) -> Decision:
        dest = DestinationWorkload(pod.identity.namespace, pod.identity.service_account, pod.name)
        return decide(self.policy, peer, dest, port)

    def _start(self) -> None:
        self.services = Services(
            tls=self.tls,
            route=lambda ip, port: self.route,
            authorize=self._authorize,
            original_destination=lambda sock: self.destination,
            observer=self.recorder,
            limits=self.limits,
            windows=self.windows,
            peers=self.peers,
        )
        inbound = socket.socket()
        inbound.bind((str(SERVER_IP), 0))
        inbound.listen(1024)
        self.tunnel_port = inbound.getsockname()[1]
        outbound = socket.socket()
        outbound.bind(("127.0.0.1", 0))
        outbound.listen(1024)
        self.outbound_address = outbound.getsockname()
        self.client_pod = PodConfig(
            "pod-1",
            CLIENT_ID,
            (ipaddress.ip_address("127.0.0.1"),),
            HostSockets(),
            self.tunnel_port,
        )
        self.server_sockets = HostSockets()
        self.server_pod = PodConfig(
            "pod-3",
            SERVER_ID,
            (SERVER_IP,),
            self.server_sockets,
            self.tunnel_port,
            frozenset({15000, 18000, self.tunnel_port}),
        )
        self.listeners = (outbound, inbound)
        self.client = PodEndpoint(self.client_pod, self.services)
        self.client.start([outbound], [])
        self.server = PodEndpoint(self.server_pod, self.services)
        self.server.start([], [inbound])

    def expect_reset(self, payload: bytes = b"x") -> None:
        """An app whose connection must end in a reset (at connect, send or receive)."""
        try:
            with self.connect() as app:
                app.sendall(payload)
                while app.recv(65536):
                    pass
        except (ConnectionResetError, BrokenPipeError):
            return
        raise AssertionError("the app's connection ended cleanly instead of with a reset")

    def small_send_buffers(self) -> None:
        """Sockets the agents accept from now on take little into the kernel: what a slow
        reader has not taken stays with the agent, where it can be seen."""

        def shrink() -> None:
            for listener in self.listeners:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            self.server_sockets.send_buffer = 8192  # the server agent's, to its app
            self.services.scratch.app_send_buffer = 8192  # what the relays set on app sockets
            self.services.scratch.app_receive_buffer = 0

        self.call(shrink)

    def connect(self, timeout: float = 10) -> socket.socket:
        """An app in the client pod connecting "to the destination" (captured to the listener)."""
        return socket.create_connection(self.outbound_address, timeout=timeout)

    def close(self) -> None:
        async def shutdown() -> None:
            await self.client.close()
            await self.server.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Server:
    """A test server app in the server pod, one handler thread per connection."""

    def __init__(self, handler: Callable[[socket.socket], Any], host: str = str(SERVER_IP)) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            with conn:
                self.handler(conn)
        except Exception as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.sock.close()


def peer_ended(sock: socket.socket) -> bool:
    """True when the other side has closed or reset this connection."""
    try:
        sock.sendall(b"x")
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
