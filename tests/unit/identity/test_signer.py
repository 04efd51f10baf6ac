"""Signing: only entitled identities, and the service keeps serving after bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from smesh.identity import certs, tls
from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import CaError, NotEntitled, SignerUnavailable
from smesh.identity.service import SignerClient, SigningService
from smesh.identity.signer import LocalSigner, StaticEntitlements
from tests.unit.identity.conftest import credential, workload

POD1, POD3 = workload("pod-1"), workload("pod-3")


def csr_pem(uri: str) -> bytes:
    return certs.csr_for(certs.new_key(), uri).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def signer(ca: CertificateAuthority) -> LocalSigner:
    return LocalSigner(ca, StaticEntitlements({"node-1": [POD1], "node-2": [POD3]}))


def test_signs_an_entitled_identity_as_the_only_uri(signer: LocalSigner) -> None:
    issued = signer.sign(csr_pem(str(POD1)), "node-1")
    cert = x509.load_pem_x509_certificate(issued.chain_pem)
    assert certs.uri_of(cert) == str(POD1)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=24, minutes=2)
    assert signer.ca.issued()[-1].identity == str(POD1)
    assert signer.ca.issued()[-1].node == "node-1"


def test_refuses_an_identity_the_node_does_not_run(signer: LocalSigner) -> None:
    with pytest.raises(NotEntitled, match=r"node node-1 may not obtain .*pod-3"):
        signer.sign(csr_pem(str(POD3)), "node-1")


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("spiffe://other.domain/ns/default/sa/pod-1", "outside this CA's trust domain"),
        ("spiffe://cluster.local/smesh/node/node-1", "no workload identity"),
        ("https://example.com/", "no workload identity"),
    ],
)
def test_refuses_requests_for_non_workload_identities(
    signer: LocalSigner, uri: str, why: str
) -> None:
    with pytest.raises((CaError, NotEntitled), match=why):
        signer.sign(csr_pem(uri), "node-1")


def test_refuses_a_request_with_extra_names(signer: LocalSigner) -> None:
    key = certs.new_key()
    names = [x509.UniformResourceIdentifier(str(POD1)), x509.DNSName("evil.example")]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(x509.SubjectAlternativeName(names), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(CaError, match="exactly one URI"):
        signer.sign(csr.public_bytes(serialization.Encoding.PEM), "node-1")
    with pytest.raises(CaError, match="not a PEM certificate signing request"):
        signer.sign(b"garbage", "node-1")


@pytest.fixture
def service(signer: LocalSigner, tmp_path: Path) -> Iterator[Path]:
    """The signing service on a real Unix socket, in its own event loop thread."""
    path = tmp_path / "signer.sock"
    loop = asyncio.new_event_loop()
    svc = SigningService(signer)
    loop.run_until_complete(svc.start(path))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield path
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(svc.close())
    loop.close()


def client_for(ca: CertificateAuthority, path: Path, node: str) -> SignerClient:
    return SignerClient(path, ca.node_credential(node), ca.bundle())


def test_service_signs_for_the_node_named_by_its_certificate(
    ca: CertificateAuthority, service: Path
) -> None:
    client = client_for(ca, service, "node-2")
    issued = client.sign(csr_pem(str(POD3)))
    assert certs.uri_of(x509.load_pem_x509_certificate(issued.chain_pem)) == str(POD3)
    assert client.bundle().pem() == ca.bundle().pem()
    with pytest.raises(NotEntitled, match="node node-2 may not obtain"):
        client.sign(csr_pem(str(POD1)))


def test_service_refuses_clients_that_are_not_nodes_and_keeps_serving(
    ca: CertificateAuthority, other_ca: CertificateAuthority, service: Path
) -> None:
    # A workload certificate (valid, same CA) is not a node credential.
    workload_client = client_for(ca, service, "node-1")
    workload_client.credential = credential(ca, POD1)
    with pytest.raises((NotEntitled, SignerUnavailable), match="only node agents"):
        workload_client._call("GET", "/v1/bundle")
    # A node credential from another CA fails the handshake.
    with pytest.raises(SignerUnavailable):
        SignerClient(service, other_ca.node_credential("node-1"), ca.bundle()).sign(
            csr_pem(str(POD1))
        )
    # Plain bytes instead of TLS.
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(service))
    raw.sendall(b"GET /v1/bundle HTTP/1.1\r\n\r\n")
    raw.settimeout(5)
    with contextlib.suppress(ConnectionError, TimeoutError):
        raw.recv(100)
    raw.close()
    # A malformed request over a valid session gets 400.
    with pytest.raises(SignerUnavailable, match="400"):
        client_for(ca, service, "node-1")._call("POST", "/v1/sign", b"not a csr")
    # And the service still works.
    assert client_for(ca, service, "node-1").sign(csr_pem(str(POD1))).chain_pem


def test_client_refuses_a_server_that_is_not_the_signer(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "fake.sock"
    fake = socket.socket(socket.AF_UNIX)
    fake.bind(str(path))
    fake.listen()
    server_ctx = tls.server_context(credential(ca, POD3), ca.bundle())

    def serve() -> None:
        conn, _ = fake.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with pytest.raises(SignerUnavailable, match="not this trust domain's signer"):
        client_for(ca, path, "node-1").sign(csr_pem(str(POD1)))
    fake.close()
