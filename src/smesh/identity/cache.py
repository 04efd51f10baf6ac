"""The node's credential cache: what lets a restarted agent serve while the signer is away.

Without it a planned restart with the signing service down (or not yet trusted, right
after a CA rotation) leaves the node's pods captured with no certificate to serve them:
they fail closed until the signer answers. The previous agent's certificates are usually
valid for hours more, so the agent keeps a copy of each — key and chain in one file, so
a reader never pairs a key with another certificate — and of the last trust bundle the
signer handed out (the roots those certificates chain to, which after a rotation the
node's bootstrap bundle lacks).

The directory holds private keys: it is created 0700 and every file 0600, written to a
temporary file and renamed (a crash leaves the old file or the new one). A directory
owned by another user is refused rather than trusted. A cached credential is used only
if it is still valid, names the identity asked for, its key matches, and it was signed
by a root of the current bundle; anything else is ignored with the reason.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from smesh.identity import certs
from smesh.identity.bundle import TrustBundle
from smesh.identity.credential import Credential
from smesh.identity.errors import IdentityError, InvalidSpiffeId
from smesh.identity.spiffe import SpiffeId
from smesh.linux.files import write_atomic

log = logging.getLogger("smesh.identity")

BUNDLE_FILE = "bundle.pem"
SUFFIX = ".pem"


class CredentialCacheError(IdentityError):
    """The credential cache directory cannot be used safely."""


class Rejected(IdentityError):
    """A cached credential exists but must not be used; the message says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # a bounded label: expired, untrusted, wrong_identity, unreadable


class CredentialCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, identity: SpiffeId) -> Path:
        # Segments never hold '/' or '%': quoting the pair is unambiguous and reversible.
        return self.directory / (
            quote(f"{identity.namespace}/{identity.service_account}", "") + SUFFIX
        )

    def ensure(self) -> None:
        """Create the directory 0700 (or tighten it); refuse one another user owns."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.directory)
        except OSError as exc:
            raise CredentialCacheError(
                f"identity.credentialCache: cannot create {self.directory}: {exc.strerror}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise CredentialCacheError(
                f"identity.credentialCache: {self.directory} is not a directory"
            )
        if st.st_uid != os.geteuid():
            raise CredentialCacheError(
                f"identity.credentialCache: {self.directory} belongs to uid {st.st_uid}, not "
                "to this agent; it holds private keys, so remove it or point the key elsewhere"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.directory, 0o700)

    def _write(self, path: Path, data: bytes) -> None:
        self.ensure()
        write_atomic(path, data, 0o600, durable=True)

    # -- writing -----------------------------------------------------------------------

    def store(self, identity: SpiffeId, credential: Credential) -> None:
        if credential.uri != str(identity):
            raise CredentialCacheError(f"refusing to cache {credential.uri} as {identity}")
        self._write(self._file(identity), credential.key_pem() + credential.cert_pem())

    def store_bundle(self, bundle: TrustBundle) -> None:
        """Write *bundle* unless the file already holds it: the file's mtime says when the
        signer's bundle last changed, which :meth:`bundle` weighs against the node's
        bootstrap bundle, so rewriting the same roots on every renewal would overrule an
        operator's later edit of that file."""
        path = self.directory / BUNDLE_FILE
        data = bundle.pem().encode()
        with contextlib.suppress(OSError):
            if path.read_bytes() == data:
                return
        self._write(path, data)

    def remove(self, identity: SpiffeId) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._file(identity).unlink()

    def prune(self, keep: Iterable[SpiffeId]) -> list[str]:
        """Remove every cached credential but *keep*'s (pods that left while no agent ran)."""
        wanted = {self._file(identity).name for identity in keep}
        removed: list[str] = []
        try:
            entries = list(self.directory.iterdir())
        except FileNotFoundError:
            return removed
        for path in entries:
            if path.name == BUNDLE_FILE or path.name in wanted:
                continue
            if path.suffix != SUFFIX and not path.name.endswith(".tmp"):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            removed.append(unquote(path.name.removesuffix(SUFFIX)))
        return removed

    # -- reading -----------------------------------------------------------------------

    def bundle(self, unless_older_than: Path | None = None) -> TrustBundle | None:
        """The last trust bundle an agent of this node got from the signer, if any.

        None as well if *unless_older_than* (the node's bootstrap bundle) was written
        later: an operator replacing that file (a root retired in a hurry) is obeyed.
        """
        path = self.directory / BUNDLE_FILE
        try:
            if unless_older_than is not None:
                with contextlib.suppress(FileNotFoundError):
                    if unless_older_than.stat().st_mtime_ns > path.stat().st_mtime_ns:
                        return None
            return TrustBundle.from_pem(path.read_bytes())
        except FileNotFoundError:
            return None
        except IdentityError as exc:
            log.warning("ignoring the cached trust bundle in %s: %s", self.directory, exc)
            return None

    def load(
        self, identity: SpiffeId, bundle: TrustBundle, now: dt.datetime | None = None
    ) -> Credential | None:
        """*identity*'s cached credential if it may be used now; None if there is none.

        Raises :class:`Rejected` (with the reason) for one that exists but must not be used.
        """
        path = self._file(identity)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            credential = Credential.from_pem(data, data)
        except (IdentityError, ValueError) as exc:
            raise Rejected("unreadable", f"{path} does not hold a credential: {exc}") from None
        check(credential, identity, bundle, now or certs.now())
        return credential


def check(
    credential: Credential, identity: SpiffeId, bundle: TrustBundle, now: dt.datetime
) -> None:
    """Raise :class:`Rejected` unless *credential* may serve *identity* at *now*."""
    try:
        named = SpiffeId.parse(credential.uri)
    except InvalidSpiffeId:
        named = None
    if named != identity:
        raise Rejected("wrong_identity", f"the cached certificate is for {credential.uri}")
    if credential.leaf.public_key() != credential.key.public_key():
        raise Rejected("unreadable", "the cached key does not match its certificate")
    if not credential.not_before <= now < credential.not_after:
        raise Rejected(
            "expired",
            f"the cached certificate is valid from {credential.not_before.isoformat()} "
            f"to {credential.not_after.isoformat()}",
        )
    if not any(_issued_by(credential.leaf, root) for root in bundle.roots):
        raise Rejected(
            "untrusted", "the cached certificate was not signed by a root of the trust bundle"
        )


def _issued_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
