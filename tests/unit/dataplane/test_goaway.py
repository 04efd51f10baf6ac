"""A pod's listeners handed to another agent: GOAWAY retires carriers, nothing is cut.

The hand-over in miniature: the "new agent" is a second endpoint of the same pod serving
on a duplicate of the inbound listening socket (what SCM_RIGHTS gives it); the old one
hands over. New connections reach the new endpoint, a connection open on the old one
flows on, and the old carrier closes once its last stream ended.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable

from smesh.dataplane.endpoint import PodEndpoint
from smesh.identity import tls
from smesh.tunnel import mux
from tests.unit.dataplane.harness import CLIENT_ID, SERVER_ID, SERVER_IP, Mesh, Server
from tests.unit.dataplane.test_adversarial import raw_tunnel


def echo_each(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def ask(app: socket.socket, message: bytes) -> bytes:
    app.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = app.recv(65536)
        assert chunk, "the connection ended"
        got += chunk
    return got


def eventually(mesh: Mesh, check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not mesh.call(check):
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.02)


def hand_over(mesh: Mesh) -> PodEndpoint:
    """Start the "new agent's" endpoint on a copy of the inbound listener, then retire the old."""

    def swap() -> PodEndpoint:
        new = PodEndpoint(mesh.server_pod, mesh.services)
        new.start([], [mesh.listeners[1].dup()])
        mesh.server.hand_over()
        return new

    return mesh.call(swap)


def test_after_a_hand_over_new_streams_go_to_the_new_endpoint_and_open_ones_flow_on(
    mesh: Mesh,
) -> None:
    server = Server(echo_each)
    mesh.destination = (SERVER_IP, server.port)
    old = mesh.server
    try:
        long_lived = mesh.connect()
        assert ask(long_lived, b"before") == b"before"
        assert mesh.call(lambda: len(old._carriers)) == 1
        new = hand_over(mesh)
        # The client's pool got GOAWAY: its next stream dials a carrier of its own.
        eventually(mesh, lambda: any(c.gone_away for c in mesh.client.pool.carriers()))
        for i in range(5):
            with mesh.connect() as app:
                assert ask(app, b"new %d" % i) == b"new %d" % i
            assert ask(long_lived, b"still %d" % i) == b"still %d" % i
        assert mesh.call(lambda: len(new._carriers)) == 1
        assert mesh.call(lambda: len(old._carriers)) == 1
        assert mesh.call(old.busy)
        long_lived.close()
        # Its last stream ended: the client closes the retired carrier, the old side is idle.
        eventually(mesh, lambda: not old.busy())
        eventually(mesh, lambda: len(mesh.client.pool.carriers()) == 1)
        with mesh.connect() as app:
            assert ask(app, b"after") == b"after"
        assert [r.result for r in mesh.recorder.records if r.result != "ok"] == []
        mesh.call(lambda: mesh.loop.create_task(new.close()))
    finally:
        server.close()


def test_handing_over_closes_this_agents_idle_outbound_carriers(mesh: Mesh) -> None:
    server = Server(echo_each)
    mesh.destination = (SERVER_IP, server.port)
    try:
        with mesh.connect() as app:
            assert ask(app, b"x") == b"x"
        eventually(mesh, lambda: mesh.client.pool.carriers() != [])
        mesh.call(mesh.client.hand_over)  # the client pod's agent hands over
        eventually(mesh, lambda: not mesh.client.busy())
    finally:
        server.close()


def mux_peer(mesh: Mesh, alpn: list[str]) -> ssl.SSLSocket:
    cred = mesh.ca.issue_credential(str(CLIENT_ID), dt.timedelta(hours=1), "node")
    ctx = tls.client_context(cred, mesh.ca.bundle())
    ctx.set_alpn_protocols(alpn)
    return ctx.wrap_socket(raw_tunnel(mesh))


def frames(sock: ssl.SSLSocket, reader: mux.FrameReader, until: int) -> list[int]:
    kinds: list[int] = []
    while until not in kinds:
        data = sock.recv(65536)
        assert data, f"closed after {kinds}"
        kinds += [kind for kind, _stream, _payload in reader.feed(memoryview(data))]
    return kinds


def test_goaway_goes_to_smesh_mux_2_clients_only_and_a_late_open_is_served(mesh: Mesh) -> None:
    server = Server(echo_each)
    mesh.destination = (SERVER_IP, server.port)
    port = server.port
    try:
        v2, v1 = mux_peer(mesh, ["smesh-mux/2", "smesh-mux/1"]), mux_peer(mesh, ["smesh-mux/1"])
        assert (v2.selected_alpn_protocol(), v1.selected_alpn_protocol()) == mux.ALPNS
        r2, r1 = mux.FrameReader(2), mux.FrameReader(1)
        for sock, reader in ((v2, r2), (v1, r1)):  # both carried before the hand-over
            sock.sendall(mux.open_frame(1, ipaddress.ip_address(str(SERVER_IP)), port))
            assert frames(sock, reader, mux.OK) == [mux.OK]
        new = hand_over(mesh)
        assert frames(v2, r2, mux.GOAWAY) == [mux.GOAWAY]
        # An OPEN that crossed the GOAWAY on the wire is served all the same; the /1 peer
        # (to which GOAWAY would be a protocol error) was told nothing and is served too.
        for sock, reader in ((v2, r2), (v1, r1)):
            sock.sendall(mux.open_frame(3, ipaddress.ip_address(str(SERVER_IP)), port))
            assert frames(sock, reader, mux.OK) == [mux.OK]
        v2.close()
        v1.close()
        mesh.call(lambda: mesh.loop.create_task(new.close()))
    finally:
        server.close()


def test_a_destination_agent_that_speaks_only_smesh_mux_1_is_served_without_goaway(
    mesh: Mesh,
) -> None:
    """The mixed pair the other way: this agent's pool dials an older agent."""
    server = Server(echo_each)
    mesh.destination = (SERVER_IP, server.port)
    mesh.tls.contexts[SERVER_ID][0].set_alpn_protocols([mux.ALPN_V1])  # the older agent
    try:
        with mesh.connect() as app:
            assert ask(app, b"hello") == b"hello"
        [carrier] = mesh.call(mesh.client.pool.carriers)
        assert carrier.version == 1
        [inbound] = mesh.call(lambda: list(mesh.server._carriers))
        assert (inbound.version, mesh.call(lambda: inbound.go_away("test"))) == (1, False)
        with mesh.connect() as app:  # still served on the same carrier
            assert ask(app, b"again") == b"again"
        assert mesh.call(mesh.client.pool.carriers) == [carrier]
    finally:
        server.close()
