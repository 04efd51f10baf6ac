"""The CA on disk: protected key, no silent overwrite, rotation in three steps."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest

from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import CaError
from tests.unit.identity.conftest import credential, workload


def test_init_writes_a_p256_root_with_a_private_key_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", "example.org")
    key_file = next((tmp_path / "ca" / "roots").glob("*.key"))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert ca.active.certificate.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert CertificateAuthority.load(tmp_path / "ca").trust_domain == "example.org"
    assert (tmp_path / "ca" / "bundle.pem").read_text() == ca.bundle().pem()


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    first = CertificateAuthority.init(tmp_path / "ca").active.id
    with pytest.raises(CaError, match=r"already exists.*--force"):
        CertificateAuthority.init(tmp_path / "ca")
    second = CertificateAuthority.init(tmp_path / "ca", force=True)
    assert second.active.id != first


def test_load_of_a_missing_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CaError, match="smesh ca init"):
        CertificateAuthority.load(tmp_path / "none")


def test_rotation_steps(ca: CertificateAuthority) -> None:
    old = ca.active
    credential(ca, workload("pod-1"), hours=1)
    new = ca.rotate()
    assert ca.active == old  # step 1: trusted, not signing
    assert [r.state for r in ca.roots] == ["active", "trusted"]
    assert len(ca.bundle().roots) == 2
    ca.activate_newest()  # step 2
    assert ca.active.id == new.id
    assert credential(ca, workload("pod-2")).leaf.issuer == new.certificate.subject
    with pytest.raises(CaError, match="1 unexpired certificates"):
        ca.retire_old()  # step 3 must wait for the old root's leaves to expire
    assert ca.retire_old(force=True) == [old.id]
    assert ca.bundle().roots == (new.certificate,)
    reloaded = json.loads((ca.directory / "ca.json").read_text())
    assert [r["state"] for r in reloaded["roots"]] == ["retired", "active"]


def test_issued_log_records_identity_serial_and_expiry(ca: CertificateAuthority) -> None:
    cred = credential(ca, workload("pod-1"), hours=2)
    [record] = ca.issued()
    assert record.identity == str(workload("pod-1"))
    assert int(record.serial, 16) == cred.serial
    assert dt.datetime.fromisoformat(record.not_after) == cred.not_after
    assert not record.expired()
