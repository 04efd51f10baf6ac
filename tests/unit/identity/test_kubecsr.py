"""How the agent reads the controller's answer on its CSR (the conditions and the certificate)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from lightkube.models.certificates_v1 import (
    CertificateSigningRequestCondition,
    CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.certificates_v1 import CertificateSigningRequest

from smesh.identity import certs
from smesh.identity.bundle import TrustBundle
from smesh.identity.errors import CaError, NotEntitled
from smesh.identity.kubecsr import MIN_EXPIRATION, KubeCsrSource, _answer, with_signing_root
from smesh.kubernetes.errors import KubeConfigError


def csr(
    *conditions: tuple[str, str, str], certificate: bytes | None = None
) -> CertificateSigningRequest:
    return CertificateSigningRequest(
        metadata=ObjectMeta(name="smesh-node-1-abcde"),
        spec=CertificateSigningRequestSpec(request="", signerName="smesh.io/workload-identity"),
        status=CertificateSigningRequestStatus(
            conditions=[
                CertificateSigningRequestCondition(type=t, status="True", reason=r, message=m)
                for t, r, m in conditions
            ],
            certificate=base64.b64encode(certificate).decode() if certificate else None,
        ),
    )


def test_pending_has_no_answer() -> None:
    assert _answer(csr()) is None
    assert _answer(csr(("Approved", "SmeshAutoApproved", "ok"))) is None  # not signed yet


def test_signed() -> None:
    assert _answer(csr(("Approved", "SmeshAutoApproved", "ok"), certificate=b"PEM")) == b"PEM"


def test_denied_carries_the_reason_and_message() -> None:
    with pytest.raises(NotEntitled, match=r"smesh-node-1-abcde denied \(NotOnNode: no meshed pod"):
        _answer(csr(("Denied", "NotOnNode", "no meshed pod of namespace shop")))


def test_failed_is_a_ca_error() -> None:
    with pytest.raises(CaError, match="failed"):
        _answer(csr(("Approved", "x", "y"), ("Failed", "NotOnNode", "gone")))


def test_lifetime_floor_is_the_api_servers(tmp_path: Path) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        ' "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],'
        ' "users": [{"name": "u", "user": {"token": "t"}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}'
    )
    source = KubeCsrSource("node-1", dt.timedelta(minutes=1), kubeconfig=config)
    assert source.expiration == MIN_EXPIRATION
    assert KubeCsrSource("node-1", dt.timedelta(hours=12), kubeconfig=config).expiration == 43200


def test_missing_kubeconfig_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError):
        KubeCsrSource("node-1", dt.timedelta(hours=1), kubeconfig=tmp_path / "absent")


def test_the_bundle_names_its_signing_root_only_if_it_is_one_of_its_roots(
    caplog: pytest.LogCaptureFixture,
) -> None:
    old, new = (certs.root_certificate(certs.new_key(), "cluster.local") for _ in range(2))
    bundle = TrustBundle((old, new))
    pem = new.public_bytes(serialization.Encoding.PEM).decode()
    assert with_signing_root(bundle, pem, "cm").signing == new
    assert with_signing_root(bundle, None, "cm").signing is None  # an older controller
    stranger = certs.root_certificate(certs.new_key(), "cluster.local")
    alien = stranger.public_bytes(serialization.Encoding.PEM).decode()
    assert with_signing_root(bundle, alien, "cm").signing is None
    assert with_signing_root(bundle, "garbage", "cm").signing is None
    assert "signing.pem is not one of the roots in roots.pem" in caplog.text
    assert "signing.pem holds no PEM certificate" in caplog.text
