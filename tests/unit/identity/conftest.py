"""A real CA in a temporary directory, and a helper for real TLS handshakes over sockets."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from smesh.identity.ca import CertificateAuthority
from smesh.identity.credential import Credential
from smesh.identity.spiffe import SpiffeId


def workload(name: str, namespace: str = "default") -> SpiffeId:
    return SpiffeId.for_workload(namespace, name)


def credential(ca: CertificateAuthority, identity: SpiffeId | str, hours: float = 24) -> Credential:
    return ca.issue_credential(str(identity), dt.timedelta(hours=hours), "node-1")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "other-ca")


@dataclass
class Handshake:
    client_error: BaseException | None
    server_error: BaseException | None
    server_saw: bytes | None  # the client's certificate, DER, as the server saw it
    client_saw: bytes | None
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    session: ssl.SSLSession | None = None,
) -> tuple[Handshake, ssl.SSLSession | None]:
    """A real TLS handshake over a socket pair, then one byte each way."""
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    result: dict[str, object] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                result["server_saw"] = tls.getpeercert(binary_form=True)
                tls.sendall(tls.recv(1))
                tls.unwrap()  # a session ended without TLS shutdown is not resumable
        except (ssl.SSLError, OSError) as exc:
            result["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    got_session = None
    try:
        with client_ctx.wrap_socket(b, session=session) as tls:
            result["client_saw"] = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
            tls.recv(1)
            result["resumed"] = tls.session_reused
            got_session = tls.session
            tls.unwrap()
    except (ssl.SSLError, OSError) as exc:
        result["client_error"] = exc
    thread.join(10)
    return (
        Handshake(
            client_error=result.get("client_error"),  # type: ignore[arg-type]
            server_error=result.get("server_error"),  # type: ignore[arg-type]
            server_saw=result.get("server_saw"),  # type: ignore[arg-type]
            client_saw=result.get("client_saw"),  # type: ignore[arg-type]
            resumed=bool(result.get("resumed")),
        ),
        got_session,
    )
