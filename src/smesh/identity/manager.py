"""A node's workload certificates: issued on demand, renewed at half-life, swapped hot.

Keys are generated here and never leave this process; the signer only ever sees requests.
Each identity has one current credential and a pair of TLS contexts built from it. On
renewal the pair is replaced: new connections use the new certificate, connections
already open keep the one they started with. Several pods may share an identity (same
namespace and service account); the credential lives while any of them uses it.

With a :class:`~smesh.identity.cache.CredentialCache` every credential obtained is also
kept on the node, and the last bundle with it. When the signer cannot be reached (or not
verified) as a credential is first needed — typically a restarted agent — a cached one
that is still valid and chains to the current bundle serves instead, and is renewed as
soon as the signer answers. The cached copy goes when the identity's last user releases
it (its pods left the mesh), not when the agent stops.

A CA rotation: when the source's bundle names a signing root (the Kubernetes CSR source
does, from the trust bundle ConfigMap) and a certificate held here was signed by another
root, that certificate is renewed early, at a random moment within ``rotation_spread``
seconds (so a cluster's agents do not all file their CSRs in the same second). Without
this an activated rotation would take a full certificate lifetime (up to 24 h) to reach
every workload, and the old root could not be retired before then anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from smesh.identity import certs, tls
from smesh.identity.bundle import TrustBundle
from smesh.identity.cache import CredentialCache, Rejected
from smesh.identity.credential import Credential
from smesh.identity.errors import IdentityError, SignerUnavailable
from smesh.identity.signer import CertificateSource
from smesh.identity.spiffe import SpiffeId

log = logging.getLogger("smesh.identity")

RETRY_AFTER = 10.0
BUNDLE_REFRESH = 300.0
MAX_SLEEP = 60.0
#: Default of identity.rotationSpread: early renewals after a rotation spread over this.
ROTATION_SPREAD = 60.0


def renewal_time(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """Half-life: late enough to be cheap, early enough to survive a signer outage."""
    return not_before + (not_after - not_before) / 2


def next_wakeup(renewals: list[float], now: float, max_sleep: float = MAX_SLEEP) -> float:
    """Seconds to sleep until the earliest renewal is due (0 if one already is)."""
    if not renewals:
        return max_sleep
    return max(0.0, min(min(renewals) - now, max_sleep))


@dataclass
class _Entry:
    credential: Credential
    server: ssl.SSLContext
    client: ssl.SSLContext
    renew_at: float
    generation: int
    users: int = 0
    failures: int = field(default=0)


class CertificateNotReady(IdentityError):
    """A connection waited for its pod's certificate in vain (``timeouts.certificateWait``).

    A pod is enrolled (captured, its listeners open) before its certificate arrives; its
    first connections wait for it rather than the pod's start waiting for the signer.
    """


class CertificateManager:
    def __init__(
        self,
        source: CertificateSource,
        bundle: TrustBundle | None = None,
        clock: Callable[[], float] = time.time,
        on_renewed: Callable[[SpiffeId, Credential], None] | None = None,
        *,
        cache: CredentialCache | None = None,
        on_cache_load: Callable[[str], None] | None = None,
        rotation_spread: float = ROTATION_SPREAD,
        on_rotation: Callable[[SpiffeId], None] | None = None,
    ) -> None:
        self.source = source
        self.rotation_spread = rotation_spread
        self.on_rotation = on_rotation  # an identity's renewal brought forward by a rotation
        self._bundle = bundle
        self._cache = cache
        self.on_cache_load = on_cache_load  # with the outcome: used, expired, untrusted, ...
        self._clock = clock
        self._entries: dict[SpiffeId, _Entry] = {}
        self._locks: dict[SpiffeId, asyncio.Lock] = {}
        self._generation = 0
        self._due_now = asyncio.Event()  # a cached credential came in: try the signer at once
        self.on_renewed = on_renewed
        # Connections waiting for an identity's first credential, and why the signer last
        # failed to give it (for their error message).
        self._arrived: dict[SpiffeId, asyncio.Event] = {}
        self._last_failure: dict[SpiffeId, str] = {}

    # -- issuing -----------------------------------------------------------------------

    async def acquire(self, identity: SpiffeId) -> Credential:
        """Make sure *identity* has a valid certificate and count one more user of it."""
        lock = self._locks.setdefault(identity, asyncio.Lock())
        async with lock:
            entry = self._entries.get(identity)
            if entry is None or entry.credential.not_after.timestamp() <= self._clock():
                fresh = True
                try:
                    entry = await self._issue(identity, entry)
                except SignerUnavailable as exc:
                    cached = await self._from_cache(identity, entry, exc)
                    if cached is None:
                        self._last_failure[identity] = str(exc)
                        raise
                    entry, fresh = cached, False
                except Exception as exc:
                    self._last_failure[identity] = str(exc)
                    raise
                self._entries[identity] = entry
                self._last_failure.pop(identity, None)
                if (arrived := self._arrived.pop(identity, None)) is not None:
                    arrived.set()
                entry.users += 1
                if fresh:
                    await self._keep(identity, entry)
                return entry.credential
            entry.users += 1
            return entry.credential

    def release(self, identity: SpiffeId) -> None:
        """One user fewer; the last one gone takes the credential, cached copy included."""
        entry = self._entries.get(identity)
        if entry is None:
            return
        entry.users -= 1
        if entry.users <= 0:
            del self._entries[identity]
            if self._cache is not None:
                try:
                    self._cache.remove(identity)
                except OSError as exc:
                    log.error("cannot remove the cached credential of %s: %s", identity, exc)

    def forget_cached_except(self, keep: set[SpiffeId]) -> list[str]:
        """Remove cached credentials of every identity but *keep* and those held now."""
        if self._cache is None:
            return []
        try:
            return self._cache.prune(keep | set(self._entries))
        except OSError as exc:
            log.error("cannot prune the credential cache: %s", exc)
            return []

    async def _from_cache(
        self, identity: SpiffeId, previous: _Entry | None, why: SignerUnavailable
    ) -> _Entry | None:
        """The cached credential of *identity*, if it may serve while the signer is away."""
        if self._cache is None or self._bundle is None:
            return None
        bundle = self._bundle
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        try:
            credential = await asyncio.to_thread(self._cache.load, identity, bundle, now)
        except Rejected as exc:
            self._cache_load(exc.reason)
            log.warning("not using the cached credential of %s: %s", identity, exc)
            return None
        if credential is None:
            self._cache_load("missing")
            return None
        self._cache_load("used")
        self._due_now.set()
        self._generation += 1
        log.warning(
            "%s; serving %s with its cached certificate (serial %x, expires %s) and "
            "renewing it as soon as the signer answers",
            why,
            identity,
            credential.serial,
            credential.not_after.isoformat(),
        )
        return _Entry(
            credential=credential,
            server=tls.server_context(credential, bundle),
            client=tls.client_context(credential, bundle),
            renew_at=self._clock(),  # due now: renew_due retries every RETRY_AFTER
            generation=self._generation,
            users=previous.users if previous else 0,
        )

    def _cache_load(self, outcome: str) -> None:
        if self.on_cache_load is not None:
            self.on_cache_load(outcome)

    async def _keep(self, identity: SpiffeId, entry: _Entry) -> None:
        """Copy a new credential (and the bundle it came with) to the cache; best effort:
        the credential serves either way, only a restart without the signer would miss it."""
        if self._cache is None:
            return
        try:
            await asyncio.to_thread(self._cache.store, identity, entry.credential)
            if self._bundle is not None:
                await asyncio.to_thread(self._cache.store_bundle, self._bundle)
            if self._entries.get(identity) is not entry:  # released while it was written
                self._cache.remove(identity)
        except (OSError, IdentityError) as exc:
            log.error("cannot cache the credential of %s: %s", identity, exc)

    async def _issue(self, identity: SpiffeId, previous: _Entry | None) -> _Entry:
        key = certs.new_key()
        csr = certs.csr_for(key, str(identity)).public_bytes(serialization.Encoding.PEM)
        issued = await asyncio.to_thread(self.source.sign, csr)
        chain = tuple(x509.load_pem_x509_certificates(issued.chain_pem))
        if certs.uri_of(chain[0]) != str(identity):
            raise IdentityError(
                f"the signer returned a certificate for another identity than {identity}"
            )
        if chain[0].public_key() != key.public_key():
            raise IdentityError("the signer returned a certificate for another key")
        bundle = TrustBundle.from_pem(issued.bundle_pem)
        if self._bundle is None or bundle.pem() != self._bundle.pem():
            self._set_bundle(bundle)
        credential = Credential(str(identity), key, chain)
        self._generation += 1
        entry = _Entry(
            credential=credential,
            server=tls.server_context(credential, self.bundle),
            client=tls.client_context(credential, self.bundle),
            renew_at=renewal_time(credential.not_before, credential.not_after).timestamp(),
            generation=self._generation,
            users=previous.users if previous else 0,
        )
        log.info(
            "certificate issued for %s, serial %x, expires %s",
            identity,
            credential.serial,
            credential.not_after.isoformat(),
        )
        return entry

    # -- what the data plane reads ---------------------------------------------------------

    def has(self, identity: SpiffeId) -> bool:
        """Whether *identity* has its TLS contexts now (else connections must wait)."""
        return identity in self._entries

    async def wait_for(self, identity: SpiffeId, timeout: float) -> None:
        """Return once *identity* has a credential; CertificateNotReady after *timeout* s.

        Its pod is captured and listening before the signer answers, so a connection that
        comes first waits here instead of failing inside the TLS setup.
        """
        if identity in self._entries:
            return
        arrived = self._arrived.setdefault(identity, asyncio.Event())
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except TimeoutError:
            why = self._last_failure.get(identity, "the signer has not answered yet")
            raise CertificateNotReady(
                f"no certificate for {identity} on this node after waiting {timeout:g} s "
                f"(timeouts.certificateWait): {why}"
            ) from None

    @property
    def bundle(self) -> TrustBundle:
        if self._bundle is None:
            raise IdentityError("no trust bundle yet: no certificate has been issued")
        return self._bundle

    def _entry(self, identity: SpiffeId) -> _Entry:
        try:
            return self._entries[identity]
        except KeyError:
            raise IdentityError(f"no certificate for {identity} on this node") from None

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        return self._entry(identity).server

    def client_context(self, identity: SpiffeId) -> ssl.SSLContext:
        return self._entry(identity).client

    def generation(self, identity: SpiffeId) -> int:
        """Changes whenever the contexts are replaced (a session cache keys on it)."""
        return self._entry(identity).generation

    def credential(self, identity: SpiffeId) -> Credential:
        return self._entry(identity).credential

    def identities(self) -> list[SpiffeId]:
        return sorted(self._entries)

    # -- renewal -----------------------------------------------------------------------

    def _set_bundle(self, bundle: TrustBundle) -> None:
        self._bundle = bundle
        for entry in self._entries.values():
            self._generation += 1
            entry.server = tls.server_context(entry.credential, bundle)
            entry.client = tls.client_context(entry.credential, bundle)
            entry.generation = self._generation
        log.info("trust bundle updated: %d roots", len(bundle.roots))

    async def renew_due(self) -> list[SpiffeId]:
        """Renew every certificate past half-life; a failure is retried later."""
        now = self._clock()
        renewed: list[SpiffeId] = []
        for identity, entry in list(self._entries.items()):
            if entry.renew_at > now:
                continue
            lock = self._locks.setdefault(identity, asyncio.Lock())
            async with lock:
                if self._entries.get(identity) is not entry:
                    continue  # released (or replaced) while an earlier renewal was awaited
                try:
                    fresh = await self._issue(identity, entry)
                except Exception as exc:  # the signer refused, or a bug: retried either way
                    entry.failures += 1
                    entry.renew_at = now + RETRY_AFTER
                    log.error(
                        "renewing %s failed (%s); retrying in %.0fs",
                        identity,
                        exc,
                        RETRY_AFTER,
                        exc_info=not isinstance(exc, IdentityError),
                    )
                    continue
                if not self._store_renewal(identity, entry, fresh):
                    continue
                await self._keep(identity, fresh)
            renewed.append(identity)
            if self.on_renewed is not None:
                self.on_renewed(identity, fresh.credential)
        return renewed

    def _store_renewal(self, identity: SpiffeId, previous: _Entry, fresh: _Entry) -> bool:
        """Keep *fresh* only if nobody released *identity* while it was being signed.

        Storing it anyway would bring back an identity no pod uses, renewed forever.
        """
        if self._entries.get(identity) is not previous:
            log.info("dropped the renewed certificate of %s: released meanwhile", identity)
            return False
        self._entries[identity] = fresh
        return True

    async def refresh_bundle(self) -> None:
        try:
            bundle = await asyncio.to_thread(self.source.bundle)
        except IdentityError as exc:
            log.warning("cannot refresh the trust bundle: %s", exc)
            return
        if self._bundle is None or bundle.pem() != self._bundle.pem():
            self._set_bundle(bundle)
            if self._cache is not None:
                try:
                    await asyncio.to_thread(self._cache.store_bundle, bundle)
                except (OSError, IdentityError) as exc:
                    log.error("cannot cache the trust bundle: %s", exc)
        self._renew_off_root(bundle)

    def _renew_off_root(self, bundle: TrustBundle) -> None:
        """Bring forward the renewal of every certificate not signed by the signing root."""
        now = self._clock()
        early = False
        for identity, entry in self._entries.items():
            if bundle.signed_by_signing_root(entry.credential.chain) is not False:
                continue
            when = now + random.uniform(0.0, self.rotation_spread)
            if entry.renew_at <= when:
                continue  # already due as soon (or brought forward before)
            entry.renew_at = when
            early = True
            log.info(
                "the CA rotated: renewing %s (serial %x, of the previous root) within %.0f s",
                identity,
                entry.credential.serial,
                when - now,
            )
            if self.on_rotation is not None:
                self.on_rotation(identity)
        if early:
            self._due_now.set()  # the renewal loop sleeps until the old earliest: wake it

    async def run(self) -> None:
        """Renew forever (the agent runs this as a task)."""
        last_bundle = self._clock()
        while True:
            self._due_now.clear()
            with contextlib.suppress(TimeoutError):  # the usual way: the earliest is due
                await asyncio.wait_for(
                    self._due_now.wait(),
                    next_wakeup([e.renew_at for e in self._entries.values()], self._clock()),
                )
            await self.renew_due()
            if self._clock() - last_bundle >= BUNDLE_REFRESH:
                await self.refresh_bundle()
                last_bundle = self._clock()
