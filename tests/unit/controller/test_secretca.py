"""The CA Secret: reading it (ours and a brought-in one), signing, and rotation's three steps."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from smesh.controller import secretca
from smesh.identity import certs
from smesh.identity.errors import CaError

TD = "cluster.local"
URI = f"spiffe://{TD}/ns/shop/sa/web"
NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def leaf_from(data: secretca.SecretData) -> tuple[x509.Certificate, ...]:
    ca = secretca.SecretCA.from_data(data)
    pem = ca.issue(certs.new_key().public_key(), URI, dt.timedelta(hours=1))
    return tuple(x509.load_pem_x509_certificates(pem))


def verifies(
    leaf: x509.Certificate, bundle_pem: str, chain: tuple[x509.Certificate, ...] = ()
) -> bool:
    store = x509.verification.Store(x509.load_pem_x509_certificates(bundle_pem.encode()))
    verifier = x509.verification.PolicyBuilder().store(store).build_client_verifier()
    try:
        verifier.verify(leaf, list(chain))
    except x509.verification.VerificationError:
        return False
    return True


def test_new_data_signs_leaves_that_chain_to_its_bundle() -> None:
    data = secretca.new_data(TD)
    chain = leaf_from(data)
    assert len(chain) == 1  # a root signs directly: no intermediates to send
    assert certs.uri_of(chain[0]) == URI
    assert verifies(chain[0], secretca.SecretCA.from_data(data).bundle_pem())


def test_intermediate_brought_in_with_ca_crt_is_sent_along() -> None:
    root_key = certs.new_key()
    root = certs.root_certificate(root_key, TD)
    # A root with pathlen 0 cannot have intermediates; a corporate root would allow one.
    root = (
        x509.CertificateBuilder()
        .subject_name(root.subject)
        .issuer_name(root.subject)
        .public_key(root_key.public_key())
        .serial_number(certs.random_serial())
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    inter_key = certs.new_key()
    inter_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "issuing")])
    inter = (
        x509.CertificateBuilder()
        .subject_name(inter_name)
        .issuer_name(root.subject)
        .public_key(inter_key.public_key())
        .serial_number(certs.random_serial())
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    data = {
        "tls.crt": inter.public_bytes(pem),
        "tls.key": inter_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "ca.crt": root.public_bytes(pem),  # cert-manager's layout
    }
    chain = leaf_from(data)
    assert chain[1] == inter
    chain[0].verify_directly_issued_by(inter)
    roots = secretca.SecretCA.from_data(data).roots.roots
    assert roots == (root,)


@pytest.mark.parametrize(("drop", "words"), [("tls.crt", "no tls.crt"), ("tls.key", "no tls.key")])
def test_missing_keys_are_named(drop: str, words: str) -> None:
    data = secretca.new_data(TD)
    del data[drop]
    with pytest.raises(CaError, match=words):
        secretca.SecretCA.from_data(data)


def test_key_of_another_certificate_is_refused() -> None:
    data = secretca.new_data(TD)
    data["tls.key"] = secretca.new_data(TD)["tls.key"]
    with pytest.raises(CaError, match="not the key of the first certificate"):
        secretca.SecretCA.from_data(data)


def test_rotation_keeps_old_leaves_valid_and_new_ones_chain_to_the_new_root() -> None:
    data = secretca.new_data(TD)
    old_root = secretca.SecretCA.from_data(data).chain[0]
    before = leaf_from(data)[0]
    staged = secretca.stage_rotation(data, TD)
    assert before.issuer == leaf_from(staged)[0].issuer  # staging does not switch signing
    staged_bundle = secretca.SecretCA.from_data(staged).bundle_pem()
    assert staged_bundle.count("BEGIN CERTIFICATE") == 2
    with pytest.raises(CaError, match="already staged"):
        secretca.stage_rotation(staged, TD)
    active = secretca.activate_rotation(staged, NOW, DAY)
    after = leaf_from(active)[0]
    new_root = secretca.SecretCA.from_data(active).chain[0]
    assert after.issuer == new_root.subject != old_root.subject
    bundle = secretca.SecretCA.from_data(active).bundle_pem()
    assert verifies(before, bundle)
    assert verifies(after, bundle)
    with pytest.raises(CaError, match="may be valid until"):
        secretca.retire_old_roots(active, NOW + dt.timedelta(hours=1))
    retired = secretca.retire_old_roots(active, NOW + DAY + dt.timedelta(minutes=2))
    bundle = secretca.SecretCA.from_data(retired).bundle_pem()
    assert not verifies(before, bundle)
    assert verifies(after, bundle)


def test_activate_without_a_staged_root() -> None:
    with pytest.raises(CaError, match="no rotation is staged"):
        secretca.activate_rotation(secretca.new_data(TD), NOW, DAY)


def test_the_published_signing_root_switches_at_activation_not_at_staging() -> None:
    """What agents renew early against: the root the signing chain ends at."""
    data = secretca.new_data(TD)
    old_root = secretca.SecretCA.from_data(data).chain[0]

    def signing(d: secretca.SecretData) -> x509.Certificate:
        published = secretca.SecretCA.from_data(d).bundle_data()
        assert published[secretca.BUNDLE_KEY].count("BEGIN CERTIFICATE") >= 1
        return x509.load_pem_x509_certificate(published[secretca.SIGNING_KEY].encode())

    assert signing(data) == old_root
    staged = secretca.stage_rotation(data, TD)
    assert signing(staged) == old_root
    active = secretca.activate_rotation(staged, NOW, DAY)
    new_root = secretca.SecretCA.from_data(active).chain[0]
    assert signing(active) == new_root != old_root
    leaf_from(active)[0].verify_directly_issued_by(signing(active))


def test_the_signing_root_of_an_intermediate_is_its_root() -> None:
    root_key = certs.new_key()
    root = certs.root_certificate(root_key, TD)
    other = certs.root_certificate(certs.new_key(), TD)  # a second trusted root
    key = certs.new_key()
    inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=smesh intermediate"))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    pem = inter.public_bytes(serialization.Encoding.PEM)
    data = {
        "tls.crt": pem,
        "tls.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "roots.pem": other.public_bytes(serialization.Encoding.PEM)
        + root.public_bytes(serialization.Encoding.PEM),
    }
    assert secretca.SecretCA.from_data(data).signing_root() == root
