"""A CA loaded once by a long-running signer follows what `smesh ca rotate` writes."""

from __future__ import annotations

from smesh.identity.ca import CertificateAuthority
from tests.unit.identity.conftest import credential, workload


def test_a_loaded_ca_follows_rotation_steps_taken_by_another_process(
    ca: CertificateAuthority,
) -> None:
    old = ca.active
    new = CertificateAuthority.load(ca.directory).rotate()
    assert ca.bundle().roots == (old.certificate, new.certificate)
    assert credential(ca, workload("pod-1")).leaf.issuer == old.certificate.subject

    CertificateAuthority.load(ca.directory).activate_newest()
    assert credential(ca, workload("pod-2")).leaf.issuer == new.certificate.subject
    assert ca.issued()[-1].root == new.id

    CertificateAuthority.load(ca.directory).retire_old(force=True)
    assert ca.bundle().roots == (new.certificate,)


def test_a_damaged_ca_json_leaves_the_signer_on_its_last_good_state(
    ca: CertificateAuthority,
) -> None:
    before = ca.bundle()
    (ca.directory / "ca.json").write_text('{"trustDomain": "cluster.')  # a hand edit gone wrong
    assert ca.bundle() == before
    assert credential(ca, workload("pod-1")).leaf.issuer == ca.active.certificate.subject

    new = CertificateAuthority.init(ca.directory, force=True)  # repaired, by a new root
    assert ca.bundle().roots == (new.active.certificate,)


def test_ca_files_are_replaced_whole(ca: CertificateAuthority) -> None:
    inode = (ca.directory / "ca.json").stat().st_ino
    ca.rotate()
    assert (ca.directory / "ca.json").stat().st_ino != inode  # readers never see it half-written
    assert sorted(p.name for p in ca.directory.iterdir()) == ["bundle.pem", "ca.json", "roots"]
