"""A long-running signing service: its own certificate and its roots change under it."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smesh.identity import certs, service
from smesh.identity.bundle import TrustBundle
from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import SignerUnavailable
from smesh.identity.service import SignerClient, SigningService
from smesh.identity.signer import LocalSigner, StaticEntitlements
from tests.unit.identity.conftest import workload

POD1, POD3 = workload("pod-1"), workload("pod-3")
T = TypeVar("T")


def csr_pem(uri: str) -> bytes:
    return certs.csr_for(certs.new_key(), uri).public_bytes(serialization.Encoding.PEM)


def service_for(ca: CertificateAuthority) -> SigningService:
    return SigningService(LocalSigner(ca, StaticEntitlements({"node-1": [POD1], "node-2": [POD3]})))


@contextmanager
def running(svc: SigningService, path: Path, started_days_ago: float = 0) -> Iterator[None]:
    """The service in its own event loop thread, as `smesh ca serve` runs it.

    *started_days_ago* backdates what the service issues at start, so the test need not
    wait weeks for its first certificate to age.
    """
    loop = asyncio.new_event_loop()
    with pytest.MonkeyPatch.context() as patch:
        real_now = certs.now
        patch.setattr(certs, "now", lambda: real_now() - dt.timedelta(days=started_days_ago))
        loop.run_until_complete(svc.start(path))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.run_until_complete(svc.close())
        left = asyncio.all_tasks(loop)
        loop.close()
    assert not left, f"stopping the service left tasks behind: {left}"


def eventually(call: Callable[[], T], seconds: float = 5.0) -> T:
    """The service acts on a timer: give it a moment, in short steps."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except SignerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_nodes_still_reach_a_service_whose_first_certificate_expired(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    path = tmp_path / "signer.sock"
    node = SignerClient(path, ca.node_credential("node-1"), ca.bundle())
    with running(service_for(ca), path, started_days_ago=31):
        assert eventually(node.bundle).pem() == ca.bundle().pem()
        assert certs.uri_of(x509.load_pem_x509_certificate(node.sign(csr_pem(str(POD1))).chain_pem))


def test_a_rotation_made_by_another_process_reaches_the_running_service(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "CHECK_INTERVAL", 0.05)
    path = tmp_path / "signer.sock"
    node = SignerClient(path, ca.node_credential("node-1"), ca.bundle())
    with running(service_for(ca), path):
        new = CertificateAuthority.load(ca.directory).rotate()  # `smesh ca rotate`
        assert len(node.bundle().roots) == 2
        CertificateAuthority.load(ca.directory).activate_newest()  # `rotate --activate`
        leaf = x509.load_pem_x509_certificate(node.sign(csr_pem(str(POD1))).chain_pem)
        assert leaf.issuer == new.certificate.subject
        # A node that knows only the new root: the service must present a certificate of
        # the new root, and accept a node credential the new root signed.
        later = CertificateAuthority.load(ca.directory).node_credential("node-2")
        new_node = SignerClient(path, later, TrustBundle((new.certificate,)))
        assert eventually(new_node.bundle).pem() == ca.bundle().pem()
