"""A real Kubernetes control plane (etcd + kube-apiserver) run from ``build/kubernetes/bin``.

The tests of the Kubernetes code talk to a real API server backed by a real etcd, never to a
fake: list/watch semantics (resource versions, bookmarks, 410 Gone after a compaction) are
exactly what a fake gets wrong. This module owns the whole life of one such control plane:
its own PKI (a CA, the API server's serving certificate, an admin client certificate in
``system:masters`` and the service-account signing key, all made with ``cryptography``), the
two processes and their data directory. :meth:`ControlPlane.stop` ends only the processes it
started, by pid, and removes everything it wrote, whatever state the start got to.

Today it binds to 127.0.0.1 for the test fixture; ``smesh lab up --kubernetes`` will reuse it
inside the lab's control-plane namespace.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smesh.lab.errors import LabError
from smesh.lab.topology import DEFAULT_SERVICE_CIDR

#: Where ``make kubernetes`` puts the binaries, relative to the repository root.
DEFAULT_BIN_DIR = Path(__file__).resolve().parents[3] / "build" / "kubernetes" / "bin"
BINARIES = ("etcd", "kube-apiserver")
#: The service network of the API server; its first address is the ``kubernetes`` Service.
SERVICE_CIDR = str(DEFAULT_SERVICE_CIDR)
ADMIN_USER = "smesh-admin"


class ControlPlaneError(LabError):
    """etcd or the API server cannot be started, reached or stopped."""


class MissingBinaries(ControlPlaneError):
    """``make kubernetes`` has not built the control plane yet."""


def missing_binaries(bin_dir: Path = DEFAULT_BIN_DIR) -> list[str]:
    """The control-plane binaries that are not built, by name."""
    return [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (another process may take it before us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Pki:
    """File paths of the control plane's keys and certificates."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_pki(directory: Path, hosts: list[str]) -> Pki:
    """Write a fresh CA, a serving certificate for *hosts*, an admin client certificate and
    the service-account key pair into *directory*.

    P-256 keys: generated in microseconds, so every control plane has its own PKI.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smesh lab kubernetes CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server_cert, server_key = leaf(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
        ExtendedKeyUsageOID.SERVER_AUTH,
        sans,
    )
    admin_cert, admin_key = leaf(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
                x509.NameAttribute(NameOID.COMMON_NAME, ADMIN_USER),
            ]
        ),
        ExtendedKeyUsageOID.CLIENT_AUTH,
        [],
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    return Pki(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM)),
        ca_key=_write(directory / "ca.key", _key_pem(ca_key)),
        server_cert=_write(directory / "apiserver.crt", server_cert),
        server_key=_write(directory / "apiserver.key", server_key),
        admin_cert=_write(directory / "admin.crt", admin_cert),
        admin_key=_write(directory / "admin.key", admin_key),
        sa_key=_write(directory / "sa.key", _key_pem(sa_key)),
        sa_pub=_write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        ),
    )


def issue_client_cert(
    pki: Pki, stem: str, common_name: str, organizations: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """A client certificate from the control plane's CA, written next to it as STEM.crt/.key.

    The API server takes the user from the CN and the groups from the O attributes, which is
    how a kubelet (``system:node:NAME`` in ``system:nodes``) or a controller is named.
    """
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ControlPlaneError(f"{pki.ca_key}: not the control plane's EC key")
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory = pki.ca_cert.parent
    return (
        _write(directory / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM)),
        _write(directory / f"{stem}.key", _key_pem(key)),
    )


def write_kubeconfig(
    path: Path,
    server: str,
    pki: Pki,
    user: str = ADMIN_USER,
    client: tuple[Path, Path] | None = None,
) -> Path:
    """A kubeconfig that verifies the API server with the control plane's CA and presents
    *client* (certificate, key); the admin certificate unless told otherwise."""
    cert, key = client or (pki.admin_cert, pki.admin_key)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "smesh",
                "cluster": {"server": server, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(cert),
                    "client-key": str(key),
                },
            }
        ],
        "contexts": [{"name": "smesh", "context": {"cluster": "smesh", "user": user}}],
        "current-context": "smesh",
    }
    # JSON is YAML: every kubeconfig reader accepts it.
    return _write(path, json.dumps(config, indent=2).encode())


def apiserver_argv(
    bin_dir: Path,
    pki: Pki,
    etcd_url: str,
    advertise: str,
    port: int,
    *,
    service_cidr: str = SERVICE_CIDR,
) -> list[str]:
    """The API server's command line that the tests' and the lab's control planes share."""
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        f"--advertise-address={advertise}",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.server_cert}",
        f"--tls-private-key-file={pki.server_key}",
        f"--client-ca-file={pki.ca_cert}",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--authorization-mode=Node,RBAC",
        f"--service-cluster-ip-range={service_cidr}",
        # Without it a SIGTERM waits for open watches forever (until our SIGKILL); with it
        # they are ended cleanly, as in a rolling restart of a real control plane.
        "--shutdown-watch-termination-grace-period=2s",
    ]


class ControlPlane:
    """etcd and kube-apiserver on *host*, with free ports, a private PKI and data directory.

    Use as a context manager, or call :meth:`start` and always :meth:`stop`.
    """

    def __init__(
        self,
        *,
        bin_dir: Path = DEFAULT_BIN_DIR,
        host: str = "127.0.0.1",
        parent_dir: Path | None = None,
        ready_timeout: float = 60.0,
        apiserver_args: tuple[str, ...] = (),
    ) -> None:
        self.bin_dir = bin_dir
        self.host = host
        self.ready_timeout = ready_timeout
        self.apiserver_args = apiserver_args
        self._parent_dir = parent_dir
        self.data_dir: Path | None = None
        self.etcd_port = 0
        self.apiserver_port = 0
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._pki: Pki | None = None

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pki(self) -> Pki:
        if self._pki is None:
            raise ControlPlaneError("the control plane is not started: call start() first")
        return self._pki

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://{self.host}:{self.etcd_port}"

    @property
    def kubeconfig(self) -> Path:
        return self._dir / "kubeconfig"

    @property
    def _dir(self) -> Path:
        if self.data_dir is None:
            raise ControlPlaneError("the control plane is not started: call start() first")
        return self.data_dir

    def start(self) -> None:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise MissingBinaries(
                f"{', '.join(missing)} not built in {self.bin_dir}: run `make kubernetes`"
            )
        self.data_dir = Path(tempfile.mkdtemp(prefix="smesh-k8s-", dir=self._parent_dir))
        try:
            pki_dir = self.data_dir / "pki"
            pki_dir.mkdir()
            hosts = [self.host, "localhost", "kubernetes", "kubernetes.default.svc", "198.18.255.1"]
            self._pki = make_pki(pki_dir, hosts)
            self._start_etcd()
            self.apiserver_port = free_port(self.host)
            write_kubeconfig(self.kubeconfig, self.server, self._pki)
            self.start_apiserver()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes (by pid) and remove the data directory; safe to call twice."""
        self.stop_apiserver()
        self._terminate(self._etcd)
        self._etcd = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def stop_apiserver(self) -> None:
        self._terminate(self._apiserver)
        self._apiserver = None

    def start_apiserver(self) -> None:
        """Start (or restart, on the same port and etcd) the API server and wait until ready."""
        if self._apiserver is not None:
            raise ControlPlaneError("the API server is already running: stop_apiserver() first")
        pki = self.pki
        args = [
            *apiserver_argv(self.bin_dir, pki, self.etcd_url, self.host, self.apiserver_port),
            f"--bind-address={self.host}",
            # A loopback advertise address has no endpoints to reconcile.
            "--endpoint-reconciler-type=none",
            *self.apiserver_args,
        ]
        self._apiserver = self._spawn("kube-apiserver", args)
        self._wait_ready("kube-apiserver", self._apiserver, self._apiserver_ready)

    def _start_etcd(self) -> None:
        self.etcd_port = free_port(self.host)
        peer_port = free_port(self.host)
        args = [
            str(self.bin_dir / "etcd"),
            "--name=smesh",
            f"--data-dir={self._dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://{self.host}:{peer_port}",
            f"--initial-advertise-peer-urls=http://{self.host}:{peer_port}",
            f"--initial-cluster=smesh=http://{self.host}:{peer_port}",
            # A throw-away store: durability across power loss buys nothing here.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]
        self._etcd = self._spawn("etcd", args)
        self._wait_ready("etcd", self._etcd, self._etcd_ready)

    # -- etcd maintenance ---------------------------------------------------------------------

    def etcd_call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        """Call etcd's v3 JSON gateway (the etcd module builds no etcdctl)."""
        request = urllib.request.Request(
            f"{self.etcd_url}/v3/{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result: dict[str, Any] = json.loads(response.read())
        except (OSError, urllib.error.URLError) as exc:
            raise ControlPlaneError(f"etcd {method} at {self.etcd_url} failed: {exc}") from exc
        return result

    def etcd_revision(self) -> int:
        """etcd's current revision, which is the newest Kubernetes resourceVersion."""
        header = self.etcd_call("kv/range", {"key": "AA=="})["header"]
        return int(header["revision"])

    def compact(self) -> int:
        """Compact etcd at its current revision, so every older resourceVersion is gone."""
        revision = self.etcd_revision()
        self.etcd_call("kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    # -- processes ----------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self._dir / f"{name}.log").open("ab")
        try:
            return subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self._dir
            )
        finally:
            log.close()

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self._dir / f"{name}.log").read_text(errors="replace")
        except (OSError, ControlPlaneError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes], probe: Any) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with {proc.returncode} while starting; its log ends:\n"
                    f"{self.log_tail(name)}"
                )
            if probe():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{name} was not ready within {self.ready_timeout:.0f} s; its log ends:\n"
            f"{self.log_tail(name)}"
        )

    def _etcd_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the API server and presents the admin certificate."""
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _apiserver_ready(self) -> bool:
        conn = http.client.HTTPSConnection(
            self.host, self.apiserver_port, context=self.ssl_context(), timeout=2
        )
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
        """End one process we started, by its pid: SIGTERM, then SIGKILL after 15 s."""
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
