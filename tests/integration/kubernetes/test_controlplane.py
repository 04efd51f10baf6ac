"""The control plane the Kubernetes tests run against: real TLS, real auth, nothing left."""

from __future__ import annotations

import http.client
import os
import ssl

import pytest

from smesh.lab.controlplane import ControlPlane


def get(plane: ControlPlane, path: str, context: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection(
        plane.host, plane.apiserver_port, context=context, timeout=10
    )
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tls_is_verified_auth_is_required_and_stop_leaves_nothing() -> None:
    plane = ControlPlane()
    plane.start()
    try:
        assert plane.data_dir is not None
        data_dir = plane.data_dir
        pids = [p.pid for p in (plane._etcd, plane._apiserver) if p is not None]
        assert len(pids) == 2
        # The admin certificate is authenticated and in system:masters.
        assert get(plane, "/api/v1/pods", plane.ssl_context()) == 200
        # The serving certificate chains to the control plane's own CA, not to the system's.
        with pytest.raises(ssl.SSLCertVerificationError):
            get(plane, "/readyz", ssl.create_default_context())
        # Without a client certificate the request is anonymous and denied.
        anonymous = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
        assert get(plane, "/api/v1/pods", anonymous) in {401, 403}
    finally:
        plane.stop()
    assert not data_dir.exists()
    assert not any(alive(pid) for pid in pids)
