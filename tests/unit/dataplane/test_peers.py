"""Inbound peers: their trust domain, and their identity bound to their address.

The registry is played by :class:`Registry`: it says whether the client's identity may
speak from where it connects, and the test changes its mind to remove the client's pod.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smesh.dataplane.context import Limits
from smesh.dataplane.peers import Peer, PeerGate, PeerRefusal, Reason
from smesh.dataplane.tlsio import TlsSession
from smesh.identity import tls
from smesh.identity.spiffe import SpiffeId
from smesh.tunnel import mux
from smesh.validation import IPAddress
from tests.unit.dataplane.harness import CLIENT_ID, SERVER_ID, SERVER_IP, Mesh, Server, recv_all
from tests.unit.dataplane.test_adversarial import raw_tunnel, still_serving, tls_tunnel
from tests.unit.dataplane.test_carrier import MuxPeer, first_answer, open_to

EVIL = SpiffeId("evil.example", "default", "pod-1")
PARTNER = SpiffeId("partner.example", "default", "pod-1")


class Registry:
    """Whether the client's pod exists (it may speak from any address here)."""

    def __init__(self) -> None:
        self.exists = True
        self.asked: list[tuple[SpiffeId, IPAddress]] = []

    def __call__(self, peer: SpiffeId, address: IPAddress) -> PeerRefusal | None:
        self.asked.append((peer, address))
        if self.exists:
            return None
        return PeerRefusal("unknown_address", f"{address} is the address of no known pod")


class Gated:
    def __init__(
        self,
        tmp: Path,
        settle: float,
        federated: frozenset[str] = frozenset(),
        limits: Limits | None = None,
    ) -> None:
        self.registry = Registry()
        self.reasons: list[Reason] = []
        self.gate = PeerGate(federated, self.registry, settle, self.reasons.append)
        self.mesh = Mesh(tmp, limits, peers=self.gate)
        self.echo = Server(lambda conn: conn.sendall(recv_all(conn)))
        self.mesh.destination = (SERVER_IP, self.echo.port)

    def remove_pod(self, announce: bool = True) -> None:
        """The client's pod is deleted; the registry tells the data plane (or not yet)."""
        self.registry.exists = False
        if announce:
            self.mesh.call(self.gate.changed)

    def close(self) -> None:
        self.echo.close()
        self.mesh.close()


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[Gated]:
    g = Gated(tmp_path, settle=0.3)
    yield g
    g.close()


def connect_with(mesh: Mesh, identity: SpiffeId) -> bytes:
    """A CONNECT to the echo server with a certificate for *identity*; the answer."""
    with tls_tunnel(mesh, identity=identity) as sock:
        port = mesh.destination[1]
        sock.sendall(f"CONNECT {SERVER_IP}:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        try:
            return sock.recv(100)
        except (ConnectionResetError, ssl.SSLError):
            return b""


def mux_peer(mesh: Mesh, identity: SpiffeId) -> ssl.SSLSocket:
    cred = mesh.ca.issue_credential(str(identity), dt.timedelta(hours=1), "node")
    return tls.client_context(cred, mesh.ca.bundle()).wrap_socket(raw_tunnel(mesh))


def test_a_certificate_of_another_trust_domain_is_refused_after_the_handshake(
    mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    """It chains to the trusted root (a root can sign any trust domain) and is still refused."""
    server = Server(lambda conn: conn.sendall(b"never"))
    mesh.destination = (SERVER_IP, server.port)
    assert connect_with(mesh, EVIL) == b""  # no answer: closed
    with mux_peer(mesh, EVIL) as sock:
        assert first_answer(sock, 1, server.port) == (0, b"")
    records = mesh.recorder.wait_for(lambda r: len(r) >= 2)
    assert all(r.result == "denied" for r in records)
    assert all("foreign_trust_domain" in r.detail for r in records)
    assert all(r.peer_identity == str(EVIL) for r in records)
    line = next(m for m in caplog.messages if m.startswith("refused tunnel peer"))
    assert str(EVIL) in line
    assert "127.0.0." in line
    server.close()
    still_serving(mesh)


def test_a_federated_trust_domain_is_served(tmp_path: Path) -> None:
    g = Gated(tmp_path, settle=0.3, federated=frozenset({"partner.example"}))
    try:
        assert connect_with(g.mesh, PARTNER).startswith(b"HTTP/1.1 200 ")
        assert connect_with(g.mesh, EVIL) == b""  # listing one domain admits no other
        assert g.reasons == ["foreign_trust_domain"]
        # only the federated peer reaches the registry (after the handshake, then its CONNECT)
        assert {peer for peer, _address in g.registry.asked} == {PARTNER}
    finally:
        g.close()


def test_a_removed_pods_carrier_stops_at_once_and_it_gets_no_new_one(gated: Gated) -> None:
    mesh = gated.mesh
    peer = MuxPeer(mesh)
    peer.send(open_to(1, str(SERVER_IP), gated.echo.port), mux.frame(mux.DATA, 1, b"open"))
    assert peer.next_event() == (mux.OK, 1, b"")  # stream 1 stays open (echo waits for FIN)

    gated.remove_pod(announce=False)  # before the registry tells anyone: every OPEN checks
    peer.send(open_to(3, str(SERVER_IP), gated.echo.port))
    kind, stream, payload = peer.next_event({mux.REFUSE})
    status, why = mux.parse_refuse(payload)
    assert (kind, stream, status) == (mux.REFUSE, 3, 403)
    assert why.startswith("peer refused: unknown_address: ")

    gated.mesh.call(gated.gate.changed)  # the registry's update closes the carrier, stream 1 too
    assert peer.next_event({0}) == (0, 0, b"")
    peer.close()
    assert gated.reasons == ["unknown_address", "unknown_address"]

    with mux_peer(mesh, CLIENT_ID) as sock:  # a new carrier: refused after the handshake
        assert first_answer(sock, 1, gated.echo.port) == (0, b"")
    assert connect_with(mesh, CLIENT_ID) == b""  # and the CONNECT fallback
    assert gated.reasons.count("unknown_address") == 4
    records = mesh.recorder.wait_for(lambda r: sum("unknown_address" in x.detail for x in r) >= 4)
    results = sorted(r.result for r in records if "unknown_address" in r.detail)
    assert results == ["denied", "denied", "denied", "reset"]  # stream 1 was reset


def test_an_app_connection_on_a_removed_pods_carrier_is_reset(gated: Gated) -> None:
    """Through the real client side: its open stream ends loudly when the pod goes."""
    with gated.mesh.connect() as app:
        app.sendall(b"ping")
        deadline = time.monotonic() + 10
        while gated.mesh.recorder.open_carriers.get("server", 0) < 1:
            assert time.monotonic() < deadline, "the carrier never opened"
            time.sleep(0.02)
        gated.remove_pod()
        with pytest.raises(ConnectionResetError):
            recv_all(app)
    # the open carrier, when the registry changed (and a carrier the client's pool may have
    # dialled meanwhile, refused for the same reason: a CI run saw two)
    assert gated.reasons
    assert set(gated.reasons) == {"unknown_address"}


def test_an_unknown_address_waits_for_the_registry_to_catch_up(tmp_path: Path) -> None:
    """A new pod's first connection may beat the registry's update: it is served once the
    update comes, within the settle time; without one it is refused when that ends."""
    g = Gated(tmp_path, settle=10)
    try:
        g.registry.exists = False  # the registry has not seen the client's pod yet

        def catch_up() -> None:
            g.registry.exists = True
            g.gate.changed()

        g.mesh.call(lambda: g.mesh.loop.call_later(0.3, catch_up))
        with mux_peer(g.mesh, CLIENT_ID) as sock:
            assert first_answer(sock, 1, g.echo.port)[0] == mux.OK
        assert g.reasons == []
        assert len(g.registry.asked) >= 2  # asked, waited, asked again
    finally:
        g.close()


def test_a_registry_that_never_learns_the_address_refuses_after_the_settle_time(
    gated: Gated,
) -> None:
    gated.registry.exists = False
    with mux_peer(gated.mesh, CLIENT_ID) as sock:
        assert first_answer(sock, 1, gated.echo.port) == (0, b"")
    assert gated.reasons == ["unknown_address"]
    gated.registry.exists = True
    still_serving(gated.mesh)


def test_refusals_are_counted_each_and_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasons: list[Reason] = []
    gate = PeerGate(refused=reasons.append)
    peer = Peer(CLIENT_ID, ipaddress.ip_address("198.18.1.2"))
    refusal = PeerRefusal("identity_mismatch", "198.18.1.2 is pod default/pod-2")
    with caplog.at_level(logging.WARNING, "smesh.dataplane"):
        for _ in range(3):
            gate.refused(refusal, peer, "pod-3", "after the TLS handshake")
        gate.refused(PeerRefusal("unknown_address", "x"), peer, "pod-3", "on a tunnel request")
    assert reasons == ["identity_mismatch"] * 3 + ["unknown_address"]
    lines = [r for r in caplog.records if r.getMessage().startswith("refused tunnel peer")]
    assert len(lines) == 2  # one per reason
    assert str(CLIENT_ID) in lines[0].getMessage()
    assert "198.18.1.2" in lines[0].getMessage()
    assert "identity_mismatch" in lines[0].getMessage()


def test_the_trust_domain_is_checked_before_the_registry_is_asked() -> None:
    asked: list[SpiffeId] = []

    def binding(peer: SpiffeId, address: IPAddress) -> PeerRefusal | None:
        asked.append(peer)
        return None

    gate = PeerGate(frozenset({"partner.example"}), binding)
    here = ipaddress.ip_address("198.18.1.2")
    refusal = gate.check(SERVER_ID, Peer(EVIL, here))
    assert refusal is not None
    assert refusal.reason == "foreign_trust_domain"
    assert "'evil.example'" in refusal.detail
    assert gate.check(SERVER_ID, Peer(PARTNER, here)) is None
    assert gate.check(SERVER_ID, Peer(CLIENT_ID, here)) is None
    assert asked == [PARTNER, CLIENT_ID]


def test_a_removed_pods_connect_tunnel_is_closed_when_the_registry_changes(
    gated: Gated,
) -> None:
    """A CONNECT tunnel (no carrier) is checked again too: with no idle timeout it would
    otherwise outlive the pod whose certificate opened it."""
    with tls_tunnel(gated.mesh, identity=CLIENT_ID) as sock:
        sock.sendall(f"CONNECT {SERVER_IP}:{gated.echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"still open")  # the echo answers at FIN only: the tunnel stays open
        gated.remove_pod()
        sock.settimeout(5)
        assert recv_all_or_reset(sock) == b""
    assert gated.reasons == ["unknown_address"]
    records = gated.mesh.recorder.wait_for(lambda r: any("unknown_address" in x.detail for x in r))
    closed = next(r for r in records if "unknown_address" in r.detail)
    assert closed.result == "reset"
    assert closed.peer_identity == str(CLIENT_ID)


def recv_all_or_reset(sock: ssl.SSLSocket) -> bytes:
    try:
        return recv_all(sock)
    except (ConnectionResetError, ssl.SSLError):
        return b""


def test_a_refused_peer_that_reads_nothing_is_reset_after_the_request_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its handshake slot is free once it is proven: the refusal needs a deadline of its own."""

    async def never_drains(self: TlsSession) -> None:  # the peer's window stays shut
        await asyncio.Event().wait()

    limits = Limits(handshake_timeout=2, connect_timeout=2, request_timeout=0.3)
    gated = Gated(tmp_path, settle=0.1, limits=limits)
    try:
        monkeypatch.setattr(TlsSession, "close", never_drains)
        gated.registry.exists = False
        with mux_peer(gated.mesh, CLIENT_ID) as sock:
            sock.settimeout(5)
            assert recv_all_or_reset(sock) == b""  # ends instead of timing out
        mesh = gated.mesh
        records = mesh.recorder.wait_for(lambda r: any(x.result == "denied" for x in r))
        assert "unknown_address" in records[-1].detail
        assert mesh.call(lambda: len(mesh.server._unproven)) == 0
    finally:
        gated.close()
