"""The certificate manager: local keys, renewal at half-life, hot swap of contexts."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading

import pytest

from smesh.identity.bundle import TrustBundle
from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import IdentityError, SignerUnavailable
from smesh.identity.manager import (
    CertificateManager,
    CertificateNotReady,
    next_wakeup,
    renewal_time,
)
from smesh.identity.signer import (
    CertificateSource,
    IssuedCertificate,
    LocalSigner,
    StaticEntitlements,
)
from smesh.identity.spiffe import SpiffeId
from smesh.identity.tls import client_context, peer_identity
from tests.unit.identity.conftest import handshake, workload

POD1, POD3 = workload("pod-1"), workload("pod-3")
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_renewal_is_at_half_life() -> None:
    assert renewal_time(T0, T0 + dt.timedelta(hours=24)) == T0 + dt.timedelta(hours=12)
    assert renewal_time(T0, T0 + dt.timedelta(minutes=10)) == T0 + dt.timedelta(minutes=5)


def test_next_wakeup() -> None:
    assert next_wakeup([], 100.0) == 60.0
    assert next_wakeup([130.0, 110.0], 100.0) == 10.0
    assert next_wakeup([90.0], 100.0) == 0.0
    assert next_wakeup([10_000.0], 100.0) == 60.0


def manager_for(ca: CertificateAuthority, clock: list[float]) -> CertificateManager:
    signer = LocalSigner(
        ca, StaticEntitlements({"node-1": [POD1, POD3]}), ttl=dt.timedelta(hours=2)
    )
    return CertificateManager(signer.for_node("node-1"), clock=lambda: clock[0])


def test_certificates_renew_after_half_life_and_contexts_swap_hot(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        now = [dt.datetime.now(dt.UTC).timestamp()]
        manager = manager_for(ca, now)
        first = await manager.acquire(POD1)
        await manager.acquire(POD3)
        old_server, old_generation = manager.server_context(POD1), manager.generation(POD1)
        assert await manager.renew_due() == []  # nothing is due yet

        now[0] += 3600 + 120  # past half-life of a 2 h certificate
        assert sorted(await manager.renew_due()) == sorted([POD1, POD3])
        second = manager.credential(POD1)
        assert second.serial != first.serial
        assert second.key is not first.key  # a new key each time, generated here
        assert manager.generation(POD1) != old_generation
        assert manager.server_context(POD1) is not old_server
        # A connection set up before the renewal keeps working with the old context.
        result, _ = handshake(old_server, manager.client_context(POD3))
        assert result.ok
        assert peer_identity(result.server_saw) == POD3

    asyncio.run(scenario())


def test_shared_identities_live_while_any_pod_uses_them(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        manager = manager_for(ca, [dt.datetime.now(dt.UTC).timestamp()])
        a = await manager.acquire(POD1)
        b = await manager.acquire(POD1)
        assert a is b
        assert len(ca.issued()) == 1
        manager.release(POD1)
        assert manager.identities() == [POD1]
        manager.release(POD1)
        assert manager.identities() == []

    asyncio.run(scenario())


def test_a_rotated_bundle_reaches_the_contexts(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        manager = manager_for(ca, [dt.datetime.now(dt.UTC).timestamp()])
        await manager.acquire(POD1)
        generation = manager.generation(POD1)
        ca.rotate()
        await manager.refresh_bundle()
        assert len(manager.bundle.roots) == 2
        assert manager.generation(POD1) != generation

    asyncio.run(scenario())


class HeldAnswers:
    """A signer whose answer the test can hold back: a renewal stays in flight."""

    def __init__(self, inner: CertificateSource) -> None:
        self.inner = inner
        self.signed = threading.Event()
        self.answer = threading.Event()
        self.answer.set()

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        issued = self.inner.sign(csr_pem)
        self.signed.set()
        self.answer.wait(5)
        return issued

    def bundle(self) -> TrustBundle:
        return self.inner.bundle()


def test_an_identity_released_while_renewing_stays_released(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        now = [dt.datetime.now(dt.UTC).timestamp()]
        signer = LocalSigner(ca, StaticEntitlements({"node-1": [POD1]}), ttl=dt.timedelta(hours=2))
        source = HeldAnswers(signer.for_node("node-1"))
        manager = CertificateManager(source, clock=lambda: now[0])
        await manager.acquire(POD1)
        source.signed.clear()
        source.answer.clear()
        now[0] += 3600 + 120  # past half-life
        renewal = asyncio.create_task(manager.renew_due())
        assert await asyncio.to_thread(source.signed.wait, 5)
        manager.release(POD1)  # the pod is deleted while the signer's answer is on its way
        source.answer.set()
        assert await renewal == []
        assert manager.identities() == []
        issued = len(ca.issued())
        now[0] += 3600
        assert await manager.renew_due() == []
        assert len(ca.issued()) == issued  # nobody asks for the gone identity again

    asyncio.run(scenario())


class FailingOnce:
    """A signer that fails once with an error that is no IdentityError (a full disk)."""

    def __init__(self, inner: CertificateSource) -> None:
        self.inner = inner
        self.fail = False

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        if self.fail:
            self.fail = False
            raise OSError(28, "No space left on device")
        return self.inner.sign(csr_pem)

    def bundle(self) -> TrustBundle:
        return self.inner.bundle()


def test_an_unexpected_renewal_error_is_retried_not_the_end_of_renewals(
    ca: CertificateAuthority,
) -> None:
    async def scenario() -> None:
        now = [dt.datetime.now(dt.UTC).timestamp()]
        signer = LocalSigner(ca, StaticEntitlements({"node-1": [POD1]}), ttl=dt.timedelta(hours=2))
        source = FailingOnce(signer.for_node("node-1"))
        manager = CertificateManager(source, clock=lambda: now[0])
        first = await manager.acquire(POD1)
        source.fail = True
        now[0] += 3600 + 120  # past half-life
        assert await manager.renew_due() == []  # failed, logged, to be retried
        now[0] += 60
        assert await manager.renew_due() == [POD1]
        assert manager.credential(POD1).serial != first.serial

    asyncio.run(scenario())


class Refusing:
    """A signer that is away (SignerUnavailable) until the test lets it answer."""

    def __init__(self, inner: CertificateSource) -> None:
        self.inner = inner
        self.away = True

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        if self.away:
            raise SignerUnavailable("signing service at /x.sock did not answer")
        return self.inner.sign(csr_pem)

    def bundle(self) -> TrustBundle:
        return self.inner.bundle()


def test_a_connection_waits_for_the_first_certificate_or_is_told_why_not(
    ca: CertificateAuthority,
) -> None:
    signer = LocalSigner(ca, StaticEntitlements({"node-1": [POD1]}), ttl=dt.timedelta(hours=2))
    source = Refusing(signer.for_node("node-1"))
    manager = CertificateManager(source)

    async def scenario() -> None:
        assert not manager.has(POD1)
        with pytest.raises(SignerUnavailable):
            await manager.acquire(POD1)
        with pytest.raises(CertificateNotReady) as refused:
            await manager.wait_for(POD1, 0.05)
        message = str(refused.value)
        assert "timeouts.certificateWait" in message
        assert "after waiting 0.05 s" in message
        assert "signing service at /x.sock did not answer" in message  # the signer's last word
        waiting = asyncio.create_task(manager.wait_for(POD1, 5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        source.away = False
        await manager.acquire(POD1)
        await asyncio.wait_for(waiting, 1)  # woken by the certificate, not the timeout
        assert manager.has(POD1)
        await manager.wait_for(POD1, 0)  # held: no wait at all

    asyncio.run(scenario())


class NamesSigningRoot:
    """A source whose bundle names the root signing now, as the Kubernetes CSR source does."""

    def __init__(self, inner: CertificateSource, ca: CertificateAuthority) -> None:
        self.inner = inner
        self.ca = ca

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        return self.inner.sign(csr_pem)

    def bundle(self) -> TrustBundle:
        return TrustBundle(self.inner.bundle().roots, self.ca.active.certificate)


def rotation_manager(
    ca: CertificateAuthority, clock: list[float], spread: float, rotated: list[SpiffeId]
) -> CertificateManager:
    signer = LocalSigner(
        ca, StaticEntitlements({"node-1": [POD1, POD3]}), ttl=dt.timedelta(hours=2)
    )
    return CertificateManager(
        NamesSigningRoot(signer.for_node("node-1"), ca),
        clock=lambda: clock[0],
        rotation_spread=spread,
        on_rotation=rotated.append,
    )


def test_an_activated_rotation_renews_the_old_roots_certificates_early(
    ca: CertificateAuthority,
) -> None:
    async def scenario() -> None:
        now = [dt.datetime.now(dt.UTC).timestamp()]
        rotated: list[SpiffeId] = []
        manager = rotation_manager(ca, now, 0.0, rotated)
        first = await manager.acquire(POD1)
        await manager.acquire(POD3)
        old_root = ca.active.certificate
        await manager.refresh_bundle()  # the root that signs them: nothing to do
        ca.rotate()
        await manager.refresh_bundle()  # staged: trusted, not signing yet
        assert await manager.renew_due() == []
        assert rotated == []

        new_root = ca.activate_newest().certificate
        await manager.refresh_bundle()
        assert sorted(rotated) == sorted([POD1, POD3])
        assert sorted(await manager.renew_due()) == sorted([POD1, POD3])  # not at half-life
        second = manager.credential(POD1)
        second.leaf.verify_directly_issued_by(new_root)
        first.leaf.verify_directly_issued_by(old_root)
        # the old certificate still verifies against the bundle: a peer holding it is served
        result, _ = handshake(manager.server_context(POD3), client_context(first, manager.bundle))
        assert result.ok
        # renewed once: the next bundle event brings nothing forward again
        await manager.refresh_bundle()
        assert len(rotated) == 2
        assert await manager.renew_due() == []

    asyncio.run(scenario())


def test_early_renewals_are_spread_and_only_brought_forward(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        now = [dt.datetime.now(dt.UTC).timestamp()]
        rotated: list[SpiffeId] = []
        manager = rotation_manager(ca, now, 30.0, rotated)
        await manager.acquire(POD1)
        ca.rotate()
        ca.activate_newest()
        await manager.refresh_bundle()
        assert await manager.renew_due() == []  # due within 30 s, not at once (p = 0)
        now[0] += 31
        assert await manager.renew_due() == [POD1]
        assert rotated == [POD1]

    asyncio.run(scenario())


def test_the_renewal_loop_wakes_for_a_rotation(ca: CertificateAuthority) -> None:
    """Without the wake-up the loop would sleep on until the old earliest renewal (or 60 s)."""

    async def scenario() -> None:
        rotated: list[SpiffeId] = []
        signer = LocalSigner(ca, StaticEntitlements({"node-1": [POD1]}), ttl=dt.timedelta(hours=2))
        source = NamesSigningRoot(signer.for_node("node-1"), ca)
        manager = CertificateManager(source, rotation_spread=0.0, on_rotation=rotated.append)
        await manager.acquire(POD1)
        loop = asyncio.create_task(manager.run())
        try:
            await asyncio.sleep(0.1)  # the loop sleeps: the next renewal is an hour away
            ca.rotate()
            new_root = ca.activate_newest().certificate
            await manager.refresh_bundle()
            async with asyncio.timeout(10):
                while manager.credential(POD1).leaf.issuer != new_root.subject:
                    await asyncio.sleep(0.05)
            manager.credential(POD1).leaf.verify_directly_issued_by(new_root)
        finally:
            loop.cancel()
            await asyncio.wait({loop}, timeout=5)

    asyncio.run(scenario())


def test_a_bundle_without_a_signing_root_brings_nothing_forward(ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        now = [dt.datetime.now(dt.UTC).timestamp()]
        manager = manager_for(ca, now)  # LocalSigner: its bundle names no signing root
        await manager.acquire(POD1)
        ca.rotate()
        ca.activate_newest()
        await manager.refresh_bundle()
        assert await manager.renew_due() == []

    asyncio.run(scenario())


def test_a_signing_root_must_be_one_of_the_bundles_roots(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.init(ca.directory.parent / "other")
    with pytest.raises(IdentityError, match="not one of the trust bundle's roots"):
        TrustBundle(ca.bundle().roots, other.active.certificate)
