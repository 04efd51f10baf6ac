"""Bad peers on the inbound port: each is refused and the listener keeps serving."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from pathlib import Path

import pytest

from smesh.dataplane.context import Limits, Route
from smesh.identity import tls
from smesh.identity.ca import CertificateAuthority
from smesh.identity.spiffe import SpiffeId
from smesh.policy import parse
from tests.unit.dataplane.harness import (
    CLIENT_ID,
    SERVER_IP,
    Mesh,
    Server,
    peer_ended,
    recv_all,
)


def still_serving(mesh: Mesh) -> None:
    """A normal tunnel works after the attack."""
    server = Server(lambda conn: conn.sendall(recv_all(conn)))
    mesh.destination = (SERVER_IP, server.port)
    with mesh.connect() as app:
        app.sendall(b"still here")
        app.shutdown(socket.SHUT_WR)
        assert recv_all(app) == b"still here"
    server.close()


def raw_tunnel(mesh: Mesh) -> socket.socket:
    return socket.create_connection((str(SERVER_IP), mesh.tunnel_port), timeout=5)


def tls_tunnel(
    mesh: Mesh, ca: CertificateAuthority | None = None, identity: SpiffeId = CLIENT_ID
) -> ssl.SSLSocket:
    """An attacker's own TLS client, with a certificate of *ca* (default: the mesh's).

    Like openssl s_client it offers no smesh-mux/1, so it gets an HTTP/1.1 CONNECT tunnel.
    """
    return peer_context(mesh, ca, identity).wrap_socket(raw_tunnel(mesh))


def peer_context(
    mesh: Mesh, ca: CertificateAuthority | None = None, identity: SpiffeId = CLIENT_ID
) -> ssl.SSLContext:
    ca = ca or mesh.ca
    cred = ca.issue_credential(str(identity), dt.timedelta(hours=1), "node")
    ctx = tls.client_context(cred, mesh.ca.bundle())
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def answer(sock: ssl.SSLSocket, request: bytes) -> bytes:
    sock.sendall(request)
    return recv_all(sock)


def test_plaintext_http_to_the_tunnel_port(mesh: Mesh) -> None:
    with raw_tunnel(mesh) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(100)
    assert not reply.startswith(b"HTTP"), "plaintext HTTP must never get an HTTP answer"
    assert reply[:1] in {b"", b"\x15"}  # nothing, or a TLS alert record
    still_serving(mesh)


def test_tls_without_a_client_certificate(mesh: Mesh) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=mesh.ca.bundle().pem())
    sock = ctx.wrap_socket(raw_tunnel(mesh))  # TLS 1.3: the client finishes first
    sock.sendall(b"CONNECT 127.0.0.3:80 HTTP/1.1\r\nhost: x\r\n\r\n")
    with sock, pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
        sock.recv(100)
    still_serving(mesh)


def test_a_certificate_from_another_ca(mesh: Mesh) -> None:
    sock = tls_tunnel(mesh, ca=mesh.other_ca)
    with sock, pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
        sock.recv(100)
    still_serving(mesh)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        (b"10.1.2.3:80", b"not this pod's address"),  # open relay attempt
        (b"127.0.0.1:15000", b"not this pod's address"),
        (b"127.0.0.3:15000", b"reserved for smesh"),
        (b"127.0.0.3:18000", b"reserved for smesh"),
    ],
)
def test_connect_to_anything_but_this_pod_is_forbidden(
    mesh: Mesh, target: bytes, why: bytes
) -> None:
    with tls_tunnel(mesh) as sock:
        reply = answer(sock, b"CONNECT " + target + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert why in reply
    still_serving(mesh)


def test_connect_to_the_tunnel_port_itself(mesh: Mesh) -> None:
    with tls_tunnel(mesh) as sock:
        reply = answer(sock, b"CONNECT 127.0.0.3:%d HTTP/1.1\r\nhost: x\r\n\r\n" % mesh.tunnel_port)
    assert reply.startswith(b"HTTP/1.1 403 ")
    still_serving(mesh)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (
            b"CONNECT 127.0.0.3:80 HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n",
            (400, 431),
        ),
        (b"GARBAGE\r\n\r\n", (400,)),
        (b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", (400,)),
        (b"CONNECT example.com:80 HTTP/1.1\r\nhost: x\r\n\r\n", (400,)),
    ],
)
def test_oversized_or_malformed_requests(
    mesh: Mesh, request_bytes: bytes, status: tuple[int, ...]
) -> None:
    with tls_tunnel(mesh) as sock:
        reply = answer(sock, request_bytes)
    assert int(reply.split(b" ")[1]) in status
    still_serving(mesh)


def test_a_peer_that_sends_nothing_is_dropped_and_frees_its_slot(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, Limits(handshake_timeout=0.5, request_timeout=0.5, max_connections=1))
    try:
        silent_tcp = raw_tunnel(mesh)  # never starts TLS
        time.sleep(0.8)
        assert peer_ended(silent_tcp)
        silent_tls = tls_tunnel(mesh)  # TLS, then no request
        time.sleep(0.8)
        assert peer_ended(silent_tls)
        silent_tcp.close()
        silent_tls.close()
        records = mesh.recorder.wait_for(lambda r: sum(x.result == "timeout" for x in r) >= 2)
        assert sum(r.result == "timeout" for r in records) >= 2
        still_serving(mesh)  # the cap of 1 would refuse this if a slot had leaked
    finally:
        mesh.close()


def test_the_client_refuses_a_server_proving_another_identity(mesh: Mesh) -> None:
    server = Server(lambda conn: conn.sendall(b"should never arrive"))
    mesh.destination = (SERVER_IP, server.port)
    mesh.route = Route("tunnel", SpiffeId.for_workload("default", "pod-4"), "pod-4")
    mesh.expect_reset(b"secret")
    records = mesh.recorder.wait_for(lambda r: any(x.direction == "outbound" for x in r))
    outbound = next(r for r in records if r.direction == "outbound")
    assert outbound.result == "error"
    assert "peer is spiffe://cluster.local/ns/default/sa/pod-3, expected" in outbound.detail
    server.close()


def test_policy_denial_is_a_403_with_a_log_line_naming_both_identities_and_the_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    policy = parse(
        "rules: [{name: no-pod1, action: deny, from: [{identity: 'spiffe://cluster.local/ns/default/sa/pod-1'}]}]"
    )
    mesh = Mesh(tmp_path, policy=policy)
    try:
        server = Server(lambda conn: conn.sendall(b"never"))
        mesh.destination = (SERVER_IP, server.port)
        mesh.expect_reset()
        records = mesh.recorder.wait_for(lambda r: len(r) == 2)
        assert {r.result for r in records} == {"denied"}
        inbound = next(r for r in records if r.direction == "inbound")
        assert inbound.rule == "no-pod1"
        line = next(m for m in caplog.messages if m.startswith("denied "))
        assert "spiffe://cluster.local/ns/default/sa/pod-1" in line
        assert "spiffe://cluster.local/ns/default/sa/pod-3" in line
        assert "no-pod1" in line
        server.close()
    finally:
        mesh.close()
