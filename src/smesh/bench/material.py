"""Certificates for the proxy pairs: one throwaway CA, one ECDSA P-256 leaf per node.

Made with the same code that issues smesh's own certificates, so every variant does the
same cryptography (P-256 signatures, TLS 1.3) and the comparison is about the tunnels.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from smesh.identity import certs

LIFETIME = dt.timedelta(hours=6)


@dataclass(frozen=True)
class NodeFiles:
    cert: Path  # leaf certificate (PEM)
    key: Path  # its private key (PEM, 0600)
    combined: Path  # certificate then key in one file, as haproxy's `crt` wants


def write(directory: Path, nodes: tuple[str, ...]) -> tuple[Path, dict[str, NodeFiles]]:
    """Write ``ca.pem`` and each node's files under *directory*; returns (CA path, files)."""
    directory.mkdir(parents=True, exist_ok=True)
    root_key = certs.new_key()
    root = certs.root_certificate(root_key, "bench.smesh", LIFETIME)
    ca = directory / "ca.pem"
    ca.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    files: dict[str, NodeFiles] = {}
    for node in nodes:
        key = certs.new_key()
        uri = f"spiffe://bench.smesh/node/{node}"
        leaf = certs.leaf_certificate(key.public_key(), uri, root, root_key, LIFETIME)
        cert_pem = leaf.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        paths = NodeFiles(
            directory / f"{node}.crt", directory / f"{node}.key", directory / f"{node}.pem"
        )
        paths.cert.write_bytes(cert_pem)
        for path, data in ((paths.key, key_pem), (paths.combined, cert_pem + key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        files[node] = paths
    return ca, files
