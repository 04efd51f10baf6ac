"""The credential cache, and the certificate manager serving from it while the signer is away."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import stat
from pathlib import Path

import pytest

from smesh.identity.bundle import TrustBundle
from smesh.identity.ca import CertificateAuthority
from smesh.identity.cache import CredentialCache, CredentialCacheError, Rejected
from smesh.identity.errors import NotEntitled, SignerUnavailable
from smesh.identity.manager import CertificateManager
from smesh.identity.signer import (
    CertificateSource,
    IssuedCertificate,
    LocalSigner,
    StaticEntitlements,
)
from tests.unit.identity.conftest import credential, handshake, workload

POD1, POD2 = workload("pod-1"), workload("pod-2")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_credential_is_kept_in_a_private_file_and_read_back(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "node" / "credentials")
    mine = credential(ca, POD1)
    cache.store(POD1, mine)
    cache.store_bundle(ca.bundle())
    assert mode_of(cache.directory) == 0o700
    [file] = [p for p in cache.directory.iterdir() if p.name != "bundle.pem"]
    assert mode_of(file) == 0o600
    assert mode_of(cache.directory / "bundle.pem") == 0o600
    assert not [p for p in cache.directory.iterdir() if p.name.endswith(".tmp")]
    bundle = cache.bundle()
    assert bundle is not None
    back = cache.load(POD1, bundle)
    assert back is not None
    assert back.serial == mine.serial
    assert back.key.private_numbers() == mine.key.private_numbers()
    assert cache.load(POD2, bundle) is None  # never cached: nothing to say


def test_a_loose_directory_is_tightened_and_a_foreign_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)
    CredentialCache(directory).ensure()
    assert mode_of(directory) == 0o700
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(directory).st_uid + 1)
    with pytest.raises(CredentialCacheError, match=r"identity.credentialCache: .* belongs to uid"):
        CredentialCache(directory).ensure()


def test_a_cached_credential_that_must_not_serve_is_refused_with_the_reason(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")
    cache.store(POD1, credential(ca, POD1, hours=1))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    with pytest.raises(Rejected) as expired:
        cache.load(POD1, ca.bundle(), later)
    assert expired.value.reason == "expired"
    with pytest.raises(Rejected) as untrusted:  # e.g. the CA was replaced meanwhile
        cache.load(POD1, other_ca.bundle())
    assert untrusted.value.reason == "untrusted"
    cache._file(POD2).write_bytes(cache._file(POD1).read_bytes())  # another pod's file
    with pytest.raises(Rejected) as wrong:
        cache.load(POD2, ca.bundle())
    assert wrong.value.reason == "wrong_identity"
    cache._file(POD1).write_bytes(b"half a file")
    with pytest.raises(Rejected) as unreadable:
        cache.load(POD1, ca.bundle())
    assert unreadable.value.reason == "unreadable"


def test_a_bootstrap_bundle_written_later_wins_over_the_cached_one(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")
    cache.store_bundle(ca.bundle())
    bootstrap = tmp_path / "bundle.pem"
    bootstrap.write_text(other_ca.bundle().pem())
    cached = cache.directory / "bundle.pem"
    os.utime(bootstrap, ns=(1, 1))
    assert cache.bundle(unless_older_than=bootstrap) == ca.bundle()  # the signer's newer word
    os.utime(cached, ns=(0, 0))
    assert cache.bundle(unless_older_than=bootstrap) is None  # the operator's newer file
    assert cache.bundle() == ca.bundle()


def test_renewals_with_the_same_bundle_leave_an_operators_later_bootstrap_edit_in_force(
    ca: CertificateAuthority, other_ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")
    bootstrap = tmp_path / "bundle.pem"

    async def scenario() -> None:
        manager = CertificateManager(source_for(ca), cache=cache)
        await manager.acquire(POD1)
        os.utime(cache.directory / "bundle.pem", ns=(0, 0))
        bootstrap.write_text(other_ca.bundle().pem())  # the operator edits it afterwards
        os.utime(bootstrap, ns=(1, 1))
        manager._entries[POD1].renew_at = 0
        assert await manager.renew_due() == [POD1]  # the signer's bundle is unchanged
        await manager.acquire(POD2)

    asyncio.run(scenario())
    assert cache.bundle(unless_older_than=bootstrap) is None  # the operator's file still wins
    cache.store_bundle(other_ca.bundle())  # a bundle that did change is written
    assert cache.bundle(unless_older_than=bootstrap) == other_ca.bundle()


def test_prune_keeps_only_the_named_identities_and_the_bundle(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")
    cache.store(POD1, credential(ca, POD1))
    cache.store(POD2, credential(ca, POD2))
    cache.store_bundle(ca.bundle())
    assert cache.prune([POD1]) == ["default/pod-2"]
    assert cache.load(POD1, ca.bundle()) is not None
    assert cache.load(POD2, ca.bundle()) is None
    assert cache.bundle() is not None


class Switchable:
    """A signer that can be made unreachable, or to refuse, like the signing service."""

    def __init__(self, inner: CertificateSource) -> None:
        self.inner = inner
        self.down = False
        self.refuse = False

    def sign(self, csr_pem: bytes) -> IssuedCertificate:
        if self.down:
            raise SignerUnavailable("signing service at /x/signer.sock did not answer")
        if self.refuse:
            raise NotEntitled("signer refused: node-1 may not obtain it")
        return self.inner.sign(csr_pem)

    def bundle(self) -> TrustBundle:
        if self.down:
            raise SignerUnavailable("signing service at /x/signer.sock did not answer")
        return self.inner.bundle()


def source_for(ca: CertificateAuthority) -> Switchable:
    signer = LocalSigner(
        ca, StaticEntitlements({"node-1": [POD1, POD2]}), ttl=dt.timedelta(hours=2)
    )
    return Switchable(signer.for_node("node-1"))


def test_a_restarted_agent_serves_with_the_cached_certificate_until_the_signer_answers(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")
    results: list[str] = []

    async def scenario() -> None:
        source = source_for(ca)
        before = CertificateManager(source, cache=cache)
        first = await before.acquire(POD1)
        await before.acquire(POD2)
        # The agent stops (nothing released), the signer goes away, a new agent starts
        # knowing only the bundle its predecessor cached.
        source.down = True
        after = CertificateManager(
            source, cache.bundle(), cache=cache, on_cache_load=results.append
        )
        served = await after.acquire(POD1)
        assert served.serial == first.serial
        result, _ = handshake(after.server_context(POD1), before.client_context(POD2))
        assert result.ok  # peers accept it: real TLS with the cached key
        assert await after.renew_due() == []  # due at once, the signer still away
        source.down = False
        after_renewal = await after.renew_due()
        assert after_renewal == []  # retried after RETRY_AFTER, not in a busy loop
        after._entries[POD1].renew_at = 0  # the retry time has come
        assert await after.renew_due() == [POD1]
        renewed = after.credential(POD1)
        assert renewed.serial != first.serial
        kept = cache.load(POD1, after.bundle)
        assert kept is not None
        assert kept.serial == renewed.serial  # the cache follows the renewal
        after.release(POD1)  # the pod leaves the mesh: its cached copy goes too
        assert cache.load(POD1, after.bundle) is None

    asyncio.run(scenario())
    assert results == ["used"]


def test_without_a_cached_certificate_or_with_a_refusal_there_is_no_fallback(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")
    results: list[str] = []

    async def scenario() -> None:
        source = source_for(ca)
        await CertificateManager(source, cache=cache).acquire(POD1)
        source.down = True
        manager = CertificateManager(
            source, cache.bundle(), cache=cache, on_cache_load=results.append
        )
        with pytest.raises(SignerUnavailable):
            await manager.acquire(POD2)  # never cached
        source.down, source.refuse = False, True
        with pytest.raises(NotEntitled):  # the signer answered no: the cache may not say yes
            await manager.acquire(POD1)

    asyncio.run(scenario())
    assert results == ["missing"]


def test_the_renewal_loop_tries_the_signer_at_once_for_a_cached_certificate(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cache = CredentialCache(tmp_path / "credentials")

    async def scenario() -> None:
        source = source_for(ca)
        first = await CertificateManager(source, cache=cache).acquire(POD1)
        source.down = True
        manager = CertificateManager(source, cache.bundle(), cache=cache)
        renewals = asyncio.create_task(manager.run())  # asleep: nothing to renew yet
        await asyncio.sleep(0.05)
        assert (await manager.acquire(POD1)).serial == first.serial
        source.down = False  # the signer is back before the loop looks
        deadline = asyncio.get_running_loop().time() + 5  # not the loop's usual 60 s nap
        while manager.credential(POD1).serial == first.serial:
            assert asyncio.get_running_loop().time() < deadline, "not renewed"
            await asyncio.sleep(0.05)
        renewals.cancel()

    asyncio.run(scenario())
