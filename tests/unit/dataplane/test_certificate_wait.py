"""A pod serves before its certificate arrives: its tunnel connections wait for it.

The agent captures a pod and opens its listeners without waiting for the signer (the CNI
ADD must not wait on it); a connection that comes first, outbound from the app or
inbound on the tunnel port, waits up to ``Limits.certificate_wait`` and is refused after
that, counted as ``no_certificate``: never sent without TLS, never failing deep inside
the TLS setup.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from smesh.dataplane.context import Limits
from tests.unit.dataplane.harness import CLIENT_ID, SERVER_ID, SERVER_IP, Mesh, Server
from tests.unit.dataplane.test_relay import echo_server, ping, recv_all


def withheld_mesh(tmp_path: Path, wait: float) -> Mesh:
    limits = Limits(handshake_timeout=5, connect_timeout=2, request_timeout=5)
    limits = Limits(**{**limits.__dict__, "certificate_wait": wait})
    return Mesh(tmp_path, limits)


@pytest.mark.parametrize("withheld", ["client", "server"])
def test_a_connection_before_the_certificate_waits_for_it_then_succeeds(
    tmp_path: Path, withheld: str
) -> None:
    mesh = withheld_mesh(tmp_path, wait=10)
    identity = CLIENT_ID if withheld == "client" else SERVER_ID
    try:
        server = echo_server()
        mesh.destination = (SERVER_IP, server.port)
        mesh.tls.withheld.add(identity)
        timer = threading.Timer(0.5, mesh.tls.withheld.discard, (identity,))
        timer.start()
        ping(mesh)  # waits for the certificate, then goes through the tunnel
        records = mesh.recorder.wait_for(lambda r: len(r) == 2)
        assert {r.result for r in records} == {"ok"}
        assert {r.route for r in records} == {"tunnel"}
        assert mesh.recorder.away == []
        server.close()
    finally:
        mesh.close()


@pytest.mark.parametrize("withheld", ["client", "server"])
def test_a_connection_whose_certificate_does_not_come_is_refused_and_counted(
    tmp_path: Path, withheld: str
) -> None:
    mesh = withheld_mesh(tmp_path, wait=0.3)
    identity = CLIENT_ID if withheld == "client" else SERVER_ID
    direction = "outbound" if withheld == "client" else "inbound"
    got: list[bytes] = []

    def echo(conn: socket.socket) -> None:
        data = recv_all(conn)
        got.append(data)
        conn.sendall(data)

    try:
        server = Server(echo)
        mesh.destination = (SERVER_IP, server.port)
        mesh.tls.withheld.add(identity)
        mesh.expect_reset(b"hello")
        records = mesh.recorder.wait_for(
            lambda r: any(x.direction == direction and x.result == "refused" for x in r)
        )
        refused = next(r for r in records if r.direction == direction)
        assert "no certificate for" in refused.detail
        assert "after 0.3 s" in refused.detail
        assert (direction, "no_certificate") in mesh.recorder.away
        assert got == []  # nothing reached the app, in plain text or not
        mesh.tls.withheld.discard(identity)
        ping(mesh)  # and the pod serves once it has its certificate
        assert got == [b"ping"]
        server.close()
    finally:
        mesh.close()
