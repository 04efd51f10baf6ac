"""The signing service agents call, and its client.

HTTP/1.1 over mutual TLS on a Unix socket. The service knows which node is asking from the
node's own certificate (``spiffe://TD/smesh/node/NAME``, issued at node set-up), never from
the request body, and signs only what that node is entitled to. Errors come back as a
status and one line; the service keeps serving.

    POST /v1/sign    body: a PEM certificate request   → 200 {"chain": PEM, "bundle": PEM}
    GET  /v1/bundle                                      → 200 PEM of every trusted root

The service's own certificate (``spiffe://TD/smesh/signer``) is renewed at half-life and
whenever another root starts signing, and the roots it trusts follow the CA's bundle:
without that, every agent would be locked out when it expires or the old root retires.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import socket
import ssl
import time
from pathlib import Path

import h11
from cryptography import x509

from smesh import httpclient
from smesh.httpserver import HttpError, HttpServer, Request, Response
from smesh.identity import certs, tls
from smesh.identity.bundle import TrustBundle
from smesh.identity.credential import Credential
from smesh.identity.errors import CaError, InvalidSpiffeId, NotEntitled, SignerUnavailable
from smesh.identity.manager import renewal_time
from smesh.identity.signer import IssuedCertificate, LocalSigner
from smesh.identity.spiffe import NodeId

log = logging.getLogger("smesh.signer")

MAX_CSR_BYTES = 16 * 1024
SIGNER_CREDENTIAL_LIFETIME = dt.timedelta(days=30)
CHECK_INTERVAL = 30.0  # how soon a rotated bundle reaches the service's own TLS context
MIN_WAIT = 1.0  # never spin, even if a certificate is due again as soon as it is made
RETRY_AFTER = 10.0


class SigningService:
    def __init__(self, signer: LocalSigner) -> None:
        self.signer = signer
        self._http = HttpServer(self._handle, max_body=MAX_CSR_BYTES)
        self._credential: Credential | None = None
        self._bundle_pem = ""
        self._context: ssl.SSLContext | None = None
        self._upkeep: asyncio.Task[None] | None = None

    @property
    def credential(self) -> Credential:
        """What the service presents to new connections now."""
        if self._credential is None:
            raise SignerUnavailable("the signing service has not started")
        return self._credential

    async def start(self, path: Path) -> None:
        self._refresh()
        path.unlink(missing_ok=True)
        await self._http.start_unix(str(path), self._context)
        path.chmod(0o600)
        self._upkeep = asyncio.create_task(self._keep_fresh(), name="signer-credential")

    async def close(self) -> None:
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
            self._upkeep = None
        await self._http.close()

    # -- the service's own credential ------------------------------------------------------

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self._seconds_to_check())
            try:
                self._refresh()
            except Exception:  # if this task ended, every agent would be locked out in days
                log.exception("cannot renew the signing service's certificate; retrying")
                await asyncio.sleep(RETRY_AFTER)

    def _seconds_to_check(self) -> float:
        due = renewal_time(self.credential.not_before, self.credential.not_after).timestamp()
        return min(max(due - time.time(), MIN_WAIT), CHECK_INTERVAL)

    def _refresh(self) -> None:
        bundle = self.signer.ca.bundle()
        credential = self._credential
        if credential is None or self._due(credential):
            credential = self._issue()
        if credential is not self._credential or bundle.pem() != self._bundle_pem:
            self._install(credential, bundle)

    def _due(self, credential: Credential) -> bool:
        """Past half-life, or signed by a root that no longer signs (so it can retire)."""
        due = renewal_time(credential.not_before, credential.not_after).timestamp()
        return (
            time.time() >= due
            or credential.leaf.issuer != self.signer.ca.active.certificate.subject
        )

    def _issue(self) -> Credential:
        ca = self.signer.ca
        credential = ca.issue_credential(ca.signer_uri(), SIGNER_CREDENTIAL_LIFETIME, "ca")
        log.info(
            "signing service certificate issued, serial %x, expires %s",
            credential.serial,
            credential.not_after.isoformat(),
        )
        return credential

    def _install(self, credential: Credential, bundle: TrustBundle) -> None:
        context = tls.server_context(credential, bundle)
        context.sni_callback = self._switch_context
        self._credential, self._bundle_pem, self._context = credential, bundle.pem(), context

    def _switch_context(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        """The listener keeps the context it started with; each handshake moves to the newest.

        Switching replaces both the certificate presented and the roots the client's
        certificate is checked against. Runs for every handshake, SNI or not.
        """
        if self._context is not None and context is not self._context:
            connection.context = self._context

    def _handle(self, request: Request) -> Response:
        node = self._node_of(request.peer_cert)
        if request.path == "/v1/bundle" and request.method == "GET":
            return Response(200, self.signer.ca.bundle().pem().encode(), "application/x-pem-file")
        if request.path != "/v1/sign":
            raise HttpError(404, "no such endpoint; use POST /v1/sign or GET /v1/bundle")
        if request.method != "POST":
            raise HttpError(405, "use POST /v1/sign")
        try:
            issued = self.signer.sign(request.body, node)
        except NotEntitled as exc:
            raise HttpError(403, str(exc)) from None
        except CaError as exc:
            raise HttpError(400, str(exc)) from None
        doc = {"chain": issued.chain_pem.decode(), "bundle": issued.bundle_pem.decode()}
        return Response(200, json.dumps(doc).encode(), "application/json")

    def _node_of(self, der: bytes | None) -> str:
        if not der:
            raise HttpError(403, "present a node certificate")
        uri = certs.uri_of(x509.load_der_x509_certificate(der))
        try:
            node = NodeId.parse(uri or "")
        except InvalidSpiffeId:
            log.warning("refused a client that is not a node agent: %s", uri)
            raise HttpError(403, f"only node agents may ask for certificates, not {uri}") from None
        if node.trust_domain != self.signer.ca.trust_domain:
            raise HttpError(403, f"{node} is from another trust domain")
        return node.node


class SignerClient:
    """The agent's :class:`~smesh.identity.signer.CertificateSource` over the signing service."""

    def __init__(
        self, path: Path, node_credential: Credential, bundle: TrustBundle, timeout: float = 10.0
    ) -> None:
        self.path = path
        self.credential = node_credential
        self._bundle = bundle
        self.timeout = timeout
        trust_domain = NodeId.parse(node_credential.uri).trust_domain
        self.signer_uri = f"spiffe://{trust_domain}/smesh/signer"

    @classmethod
    def from_directory(cls, path: Path, credential_dir: Path) -> SignerClient:
        """Node credentials as the lab writes them: cert.pem, key.pem and bundle.pem."""
        credential = Credential.read(credential_dir / "cert.pem", credential_dir / "key.pem")
        try:
            bundle = TrustBundle.from_pem((credential_dir / "bundle.pem").read_bytes())
        except FileNotFoundError:
            raise SignerUnavailable(f"no trust bundle at {credential_dir / 'bundle.pem'}") from None
        return cls(path, credential, bundle)

    @property
    def known_bundle(self) -> TrustBundle:
        """The roots trusted now without asking the signer (bootstrap, or its last answer)."""
        return self._bundle

    def _call(self, method: str, target: str, body: bytes = b"") -> bytes:
        ctx = tls.client_context(self.credential, self._bundle)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(self.timeout)
        try:
            raw.connect(str(self.path))
            with ctx.wrap_socket(raw) as sock:
                if (
                    certs.uri_of(x509.load_der_x509_certificate(sock.getpeercert(True) or b""))
                    != self.signer_uri
                ):
                    raise SignerUnavailable(f"{self.path} is not this trust domain's signer")
                status, reply = httpclient.exchange(
                    sock, method, target, [("host", "signer")], body
                )
        except (OSError, ssl.SSLError, h11.ProtocolError, ValueError) as exc:
            raise SignerUnavailable(
                f"signing service at {self.path} did not answer: {exc}"
            ) from None
        finally:
            raw.close()
        if status != 200:
            message = reply.decode(errors="replace").strip()
            if status == 403:
                raise NotEntitled(f"signer refused: {message}")
            raise SignerUnavailable(f"signer answered {status}: {message}")
        return reply

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        doc = json.loads(self._call("POST", "/v1/sign", csr_pem))
        self._bundle = TrustBundle.from_pem(doc["bundle"])
        return IssuedCertificate(doc["chain"].encode(), doc["bundle"].encode())

    def bundle(self) -> TrustBundle:
        self._bundle = TrustBundle.from_pem(self._call("GET", "/v1/bundle"))
        return self._bundle
