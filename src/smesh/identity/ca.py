"""A certificate authority kept in a directory.

Layout of ``DIR``::

    ca.json            trust domain and the roots, each "active" (signs), "trusted" or "retired"
    roots/ID.pem       root certificates
    roots/ID.key       their keys (mode 0600)
    bundle.pem         every root not retired: what peers must trust
    issued.jsonl       one line per certificate issued: identity, serial, node, validity

Rotating the root without downtime takes three steps (``smesh ca rotate``):

1. ``rotate``: a new root joins the bundle as *trusted*; the old one keeps signing. Agents
   pick up the bundle with their next renewal (at half-life of their certificates).
2. ``rotate --activate``: once every agent trusts the new root, it signs from now on.
3. ``rotate --retire-old``: once the last certificate signed by an old root has expired,
   that root leaves the bundle.

Each step is another process rewriting ``ca.json``; a running signer (``smesh ca serve``,
an agent with ``caDir``) notices the change on its next request and follows it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smesh import jsonlines
from smesh.identity import certs
from smesh.identity.bundle import TrustBundle
from smesh.identity.credential import Credential
from smesh.identity.errors import CaError
from smesh.identity.spiffe import NodeId, validate_trust_domain

log = logging.getLogger("smesh.ca")

DEFAULT_DIR = Path("/var/lib/smesh/ca")
NODE_CREDENTIAL_LIFETIME = dt.timedelta(days=365)
SIGNER_URI_PATH = "/smesh/signer"


@dataclass(frozen=True)
class Root:
    id: str
    state: str  # active | trusted | retired
    certificate: x509.Certificate


@dataclass(frozen=True)
class Issued:
    identity: str
    serial: str
    node: str
    root: str
    not_before: str
    not_after: str

    def expired(self, at: dt.datetime | None = None) -> bool:
        return dt.datetime.fromisoformat(self.not_after) <= (at or certs.now())


def _root_id(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:x}"[:16]


# inode, size, mtime: a replaced ca.json is a new file, made while the one it replaces
# still existed, so its inode at least differs from the one last seen.
Stamp = tuple[int, int, int]


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _replace(path: Path, text: str) -> Stamp:
    """Write *path* whole or not at all: a signer reading it meanwhile sees old or new, never half.

    A unique temporary name, so two concurrent writers cannot mix their bytes either.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o644)
            os.fsync(out.fileno())
            stamp = _stamp(os.fstat(out.fileno()))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return stamp


class CertificateAuthority:
    def __init__(self, directory: Path, trust_domain: str, roots: list[Root]) -> None:
        self.directory = directory
        self.trust_domain = trust_domain
        self.roots = roots
        self._lock = threading.Lock()
        self._stamp = self._stat()

    # -- creation and loading ------------------------------------------------------------

    @classmethod
    def init(
        cls, directory: Path, trust_domain: str = "cluster.local", force: bool = False
    ) -> CertificateAuthority:
        validate_trust_domain(trust_domain)
        if (directory / "ca.json").exists() and not force:
            raise CaError(
                f"a CA already exists in {directory}; pass --force to replace it "
                "(every certificate it issued will stop verifying)"
            )
        (directory / "roots").mkdir(parents=True, exist_ok=True)
        for stale in (directory / "roots").iterdir():
            stale.unlink()
        (directory / "issued.jsonl").unlink(missing_ok=True)
        ca = cls(directory, trust_domain, [])
        ca._add_root("active")
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        try:
            meta = json.loads((directory / "ca.json").read_text())
        except FileNotFoundError:
            raise CaError(
                f"no CA in {directory}; create one with `smesh ca init --dir {directory}`"
            ) from None
        except ValueError as exc:
            raise CaError(f"{directory / 'ca.json'} is damaged: {exc}") from None
        roots = [
            Root(
                entry["id"],
                entry["state"],
                x509.load_pem_x509_certificate(
                    (directory / "roots" / f"{entry['id']}.pem").read_bytes()
                ),
            )
            for entry in meta["roots"]
        ]
        return cls(directory, meta["trustDomain"], roots)

    def _save(self) -> None:
        meta = {
            "trustDomain": self.trust_domain,
            "roots": [{"id": r.id, "state": r.state} for r in self.roots],
        }
        self._stamp = _replace(self.directory / "ca.json", json.dumps(meta, indent=2))
        _replace(self.directory / "bundle.pem", self.bundle().pem())

    # -- following changes made by other processes -------------------------------------

    def _stat(self) -> Stamp | None:
        try:
            return _stamp((self.directory / "ca.json").stat())
        except OSError:
            return None

    def _follow_disk(self) -> None:
        """Adopt roots that `smesh ca rotate` (another process) wrote since we last looked.

        One stat per call, so signers can afford it on every request. A state that cannot
        be read is logged once and the last good one kept: signing must go on.
        """
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                fresh = CertificateAuthority.load(self.directory)
            except (CaError, OSError, ValueError, KeyError, TypeError) as exc:
                log.error("kept the previous CA state: cannot read the new one: %s", exc)
                return
            if fresh.trust_domain != self.trust_domain:
                log.error(
                    "kept the previous CA state: %s now holds a CA for %s, not %s; restart",
                    self.directory,
                    fresh.trust_domain,
                    self.trust_domain,
                )
                return
            self.roots = fresh.roots
            log.info("CA reloaded: %s", ", ".join(f"{r.id} {r.state}" for r in self.roots))

    def _add_root(self, state: str) -> Root:
        key = certs.new_key()
        cert = certs.root_certificate(key, self.trust_domain)
        root = Root(_root_id(cert), state, cert)
        base = self.directory / "roots" / root.id
        base.with_suffix(".pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        fd = os.open(base.with_suffix(".key"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        self.roots.append(root)
        self._save()
        return root

    # -- signing ---------------------------------------------------------------------

    @property
    def active(self) -> Root:
        self._follow_disk()
        return next(r for r in self.roots if r.state == "active")

    def _key(self, root: Root) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(
            (self.directory / "roots" / f"{root.id}.key").read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CaError(f"root {root.id}'s key is not an ECDSA key")
        return key

    def bundle(self) -> TrustBundle:
        self._follow_disk()
        return TrustBundle(tuple(r.certificate for r in self.roots if r.state != "retired"))

    def issue(
        self, public: ec.EllipticCurvePublicKey, uri: str, lifetime: dt.timedelta, node: str
    ) -> x509.Certificate:
        """Sign a leaf for *uri* (the caller has checked that *node* may have it)."""
        root = self.active
        cert = certs.leaf_certificate(public, uri, root.certificate, self._key(root), lifetime)
        record = {
            "identity": uri,
            "serial": f"{cert.serial_number:x}",
            "node": node,
            "root": root.id,
            "not_before": cert.not_valid_before_utc.isoformat(),
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
        line = (json.dumps(record) + "\n").encode()
        fd = os.open(self.directory / "issued.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write per record: concurrent signers never interleave
        finally:
            os.close(fd)
        return cert

    def issue_credential(self, uri: str, lifetime: dt.timedelta, node: str) -> Credential:
        """Key and certificate made here: only for bootstrap (node and signer credentials)."""
        key = certs.new_key()
        cert = self.issue(key.public_key(), uri, lifetime, node)
        return Credential(uri, key, (cert,))

    def node_credential(
        self, node: str, lifetime: dt.timedelta = NODE_CREDENTIAL_LIFETIME
    ) -> Credential:
        """The credential a node's agent uses to authenticate to the signer."""
        return self.issue_credential(str(NodeId(self.trust_domain, node)), lifetime, node)

    def signer_uri(self) -> str:
        return f"spiffe://{self.trust_domain}{SIGNER_URI_PATH}"

    def issued(self) -> list[Issued]:
        try:  # a signer may be appending to it right now
            records = jsonlines.whole_records(self.directory / "issued.jsonl")
        except FileNotFoundError:
            return []
        return [Issued(**record) for record in records]

    # -- rotation --------------------------------------------------------------------

    def rotate(self) -> Root:
        """Step 1: a new root, trusted by everyone but not signing yet."""
        self._follow_disk()
        return self._add_root("trusted")

    def activate_newest(self) -> Root:
        """Step 2: the newest root signs from now on; the previous one stays trusted."""
        self._follow_disk()
        newest = self.roots[-1]
        if newest.state == "active":
            raise CaError(
                f"root {newest.id} is already the active one; run `smesh ca rotate` first"
            )
        if newest.state == "retired":
            raise CaError(f"root {newest.id} is retired")
        self.roots = [
            Root(r.id, "trusted" if r.state == "active" else r.state, r.certificate)
            if r is not newest
            else Root(r.id, "active", r.certificate)
            for r in self.roots
        ]
        self._save()
        return self.active

    def retire_old(self, force: bool = False) -> list[str]:
        """Step 3: drop trusted (non-signing) roots whose certificates have all expired."""
        self._follow_disk()
        issued = self.issued()
        retired: list[str] = []
        for i, root in enumerate(self.roots):
            if root.state != "trusted":
                continue
            live = [c for c in issued if c.root == root.id and not c.expired()]
            if live and not force:
                last = max(c.not_after for c in live)
                raise CaError(
                    f"root {root.id} still has {len(live)} unexpired certificates (the last "
                    f"expires {last}); retire it after that, or pass --force"
                )
            self.roots[i] = Root(root.id, "retired", root.certificate)
            retired.append(root.id)
        self._save()
        return retired

    def describe(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "trust_domain": self.trust_domain,
            "roots": [
                {
                    "id": r.id,
                    "state": r.state,
                    "not_after": r.certificate.not_valid_after_utc.isoformat(),
                }
                for r in self.roots
            ],
            "issued": [vars(c) | {"expired": c.expired()} for c in self.issued()],
        }
