"""Attacks on a pod's tunnel port, with real peers (curl, openssl s_client) from a node.

Every attack is refused (a TLS alert or an HTTP status), and the mesh keeps serving.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import time
from pathlib import Path

import pytest

from smesh.agent import client
from smesh.identity.ca import CertificateAuthority
from smesh.identity.spiffe import SpiffeId
from tests.integration.labkit import Lab, LabFactory

POD3 = "198.18.2.2"
TUNNEL = f"{POD3}:18001"


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    lab = lab_factory(
        "--agent-set", "timeouts.request=1s", "--agent-set", "timeouts.tlsHandshake=2s"
    )
    lab.spawn("pod-3", ["python3", "-m", "http.server", "8080", "--directory", "/etc"])
    lab.wait_tcp("pod-1", POD3, 8080)
    return lab


def credential(tmp_path: Path, ca: CertificateAuthority, who: str) -> tuple[str, str]:
    cred = ca.issue_credential(
        str(SpiffeId.for_workload("default", who)), dt.timedelta(hours=1), "attacker"
    )
    cert, key = tmp_path / f"{who}.pem", tmp_path / f"{who}.key"
    cred.write_to_path(cert, key)
    return str(cert), str(key)


def lab_ca(lab: Lab) -> CertificateAuthority:
    return CertificateAuthority.load(Path(f"/run/smesh/labs/{lab.name}/ca"))


def via_tunnel(
    lab: Lab, target: str, cert: tuple[str, str] | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    """curl through the tunnel port as an HTTPS proxy, from node-1 (outside every pod)."""
    argv = ["curl", "-sS", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", "-p"]
    argv += ["--proxy", f"https://{TUNNEL}", "--proxy-insecure", *extra]
    if cert is not None:
        argv += ["--proxy-cert", cert[0], "--proxy-key", cert[1]]
    return lab.exec("node-1", [*argv, f"http://{target}/"])


def still_serving(lab: Lab) -> None:
    page = lab.exec("pod-1", ["curl", "-sS", "-m", "8", f"http://{POD3}:8080/hostname"])
    assert page.returncode == 0, f"the mesh stopped serving: {page.stderr}"


def test_a_valid_identity_can_use_the_tunnel_port_directly(lab: Lab, tmp_path: Path) -> None:
    proc = via_tunnel(lab, f"{POD3}:8080", credential(tmp_path, lab_ca(lab), "pod-2"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "200"


def test_plaintext_http_to_the_tunnel_port(lab: Lab) -> None:
    proc = lab.exec("node-1", ["curl", "-sS", "-m", "5", f"http://{TUNNEL}/"])
    assert proc.returncode != 0
    assert "HTTP/" not in proc.stdout
    still_serving(lab)


def test_tls_without_a_client_certificate(lab: Lab) -> None:
    proc = via_tunnel(lab, f"{POD3}:8080", None)
    assert proc.returncode != 0
    assert "certificate required" in proc.stderr
    still_serving(lab)


def test_a_certificate_from_another_ca(lab: Lab, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other-ca")
    proc = via_tunnel(lab, f"{POD3}:8080", credential(tmp_path, other, "pod-1"))
    assert proc.returncode != 0
    assert "unknown ca" in proc.stderr
    still_serving(lab)


@pytest.mark.parametrize(
    "target",
    [
        "198.18.2.3:8080",  # another pod: the open relay the seed had
        "127.0.0.1:15000",  # the agent's admin port, via the pod's loopback
        f"{POD3}:18001",  # the tunnel port itself (a loop)
        f"{POD3}:18000",  # the outbound listener
    ],
)
def test_a_valid_certificate_cannot_reach_anything_but_this_pods_apps(
    lab: Lab, tmp_path: Path, target: str
) -> None:
    proc = via_tunnel(lab, target, credential(tmp_path, lab_ca(lab), "pod-1"))
    assert proc.returncode != 0
    assert "403" in proc.stderr
    still_serving(lab)


def test_an_oversized_connect_request(lab: Lab, tmp_path: Path) -> None:
    big = ["--proxy-header", "X-Big: " + "a" * 20000]
    proc = via_tunnel(lab, f"{POD3}:8080", credential(tmp_path, lab_ca(lab), "pod-1"), *big)
    assert proc.returncode != 0
    assert "431" in proc.stderr or "400" in proc.stderr
    still_serving(lab)


def s_client(
    lab: Lab, cert: tuple[str, str], stdin_cmd: str, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """openssl s_client fed by *stdin_cmd*; it ends when the agent hangs up, not the feeder."""
    script = (
        f"openssl s_client -quiet -connect {TUNNEL} -cert {cert[0]} -key {cert[1]} "
        f"< <(exec 2>/dev/null; {stdin_cmd}) 2>/dev/null"  # the feeder must not hold our stderr
    )
    return lab.exec("node-1", ["bash", "-c", script], timeout=timeout)


def test_a_malformed_request(lab: Lab, tmp_path: Path) -> None:
    proc = s_client(
        lab, credential(tmp_path, lab_ca(lab), "pod-1"), "printf 'GARBAGE\\r\\n\\r\\n'; sleep 2"
    )
    assert proc.stdout.startswith("HTTP/1.1 400 ")
    still_serving(lab)


def test_a_peer_that_opens_tls_and_sends_nothing_is_dropped(lab: Lab, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = s_client(lab, credential(tmp_path, lab_ca(lab), "pod-1"), "sleep 15")
    # the agent hung up after its 1 s request timeout, long before the peer gave up
    assert time.monotonic() - started < 10, proc.stdout
    node2 = next(n for n in lab.status()["nodes"] if n["name"] == "node-2")
    open_now = client.get("127.0.0.1", 15000, "/debug/connections", netns=node2["netns"]).json()
    assert open_now["connections"] == []
    still_serving(lab)
