"""Attacks on a pod's tunnel port, with real peers (curl, openssl s_client).

Every attack is refused (a TLS alert or close, or an HTTP status), and the mesh keeps
serving. A pod's certificate works only from that pod's own address, so attacks that need
one to get past TLS run inside that pod's namespace (its tunnel port is never captured);
the others run from a node, outside every pod.
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
from smesh.jsonlines import whole_records
from smesh.lab.agents import DEBUG_PORT
from tests.integration.labkit import Lab, LabFactory
from tests.integration.mesh.test_agent import admin, meshed_here, metric, set_meshed, wait

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


def credential(
    tmp_path: Path, ca: CertificateAuthority, who: str, trust_domain: str = "cluster.local"
) -> tuple[str, str]:
    """A pod's certificate, as a thief would hold it (or one the CA should never have made)."""
    cred = ca.issue_credential(
        str(SpiffeId.for_workload("default", who, trust_domain)), dt.timedelta(hours=1), "attacker"
    )
    cert, key = tmp_path / f"{who}.pem", tmp_path / f"{who}.key"
    cred.write_to_path(cert, key)
    return str(cert), str(key)


def lab_ca(lab: Lab) -> CertificateAuthority:
    return CertificateAuthority.load(Path(f"/run/smesh/labs/{lab.name}/ca"))


def via_tunnel(
    lab: Lab, target: str, cert: tuple[str, str] | None, *extra: str, member: str = "node-1"
) -> subprocess.CompletedProcess[str]:
    """curl through the tunnel port as an HTTPS proxy, from *member* (node-1: outside every pod)."""
    argv = ["curl", "-sS", "-m", "8", "-o", "/dev/null", "-w", "%{http_code}", "-p"]
    argv += ["--proxy", f"https://{TUNNEL}", "--proxy-insecure", *extra]
    if cert is not None:
        argv += ["--proxy-cert", cert[0], "--proxy-key", cert[1]]
    return lab.exec(member, [*argv, f"http://{target}/"])


def still_serving(lab: Lab) -> None:
    page = lab.exec("pod-1", ["curl", "-sS", "-m", "8", f"http://{POD3}:8080/hostname"])
    assert page.returncode == 0, f"the mesh stopped serving: {page.stderr}"


def test_a_valid_identity_can_use_the_tunnel_port_directly(lab: Lab, tmp_path: Path) -> None:
    cert = credential(tmp_path, lab_ca(lab), "pod-2")
    proc = via_tunnel(lab, f"{POD3}:8080", cert, member="pod-2")
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
        "127.0.0.1:15000",  # the agent's debug port, via the pod's loopback
        "127.0.0.1:15020",  # the agent's scrape port, likewise
        f"{POD3}:18001",  # the tunnel port itself (a loop)
        f"{POD3}:18000",  # the outbound listener
    ],
)
def test_a_valid_certificate_cannot_reach_anything_but_this_pods_apps(
    lab: Lab, tmp_path: Path, target: str
) -> None:
    proc = via_tunnel(lab, target, credential(tmp_path, lab_ca(lab), "pod-1"), member="pod-1")
    assert proc.returncode != 0
    assert "403" in proc.stderr
    still_serving(lab)


def test_an_oversized_connect_request(lab: Lab, tmp_path: Path) -> None:
    big = ["--proxy-header", "X-Big: " + "a" * 20000]
    cert = credential(tmp_path, lab_ca(lab), "pod-1")
    proc = via_tunnel(lab, f"{POD3}:8080", cert, *big, member="pod-1")
    assert proc.returncode != 0
    assert "431" in proc.stderr or "400" in proc.stderr
    still_serving(lab)


def s_client(
    lab: Lab, cert: tuple[str, str], stdin_cmd: str, timeout: float = 20, member: str = "pod-1"
) -> subprocess.CompletedProcess[str]:
    """openssl s_client fed by *stdin_cmd*; it ends when the agent hangs up, not the feeder.

    From pod-1 by default: the certificates given are pod-1's.
    """
    script = (
        f"openssl s_client -quiet -connect {TUNNEL} -cert {cert[0]} -key {cert[1]} "
        f"< <(exec 2>/dev/null; {stdin_cmd}) 2>/dev/null"  # the feeder must not hold our stderr
    )
    return lab.exec(member, ["bash", "-c", script], timeout=timeout)


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
    open_now = client.get(
        "127.0.0.1", DEBUG_PORT, "/debug/connections", netns=node2["netns"]
    ).json()
    assert open_now["connections"] == []
    still_serving(lab)


# -- identities bound to their pods: a stolen or mis-issued certificate is refused ---------


def refusals(lab: Lab, reason: str) -> list[dict[str, object]]:
    """pod-3's agent's log lines refusing a tunnel peer for *reason*."""
    return [
        doc
        for doc in whole_records(f"/run/smesh/labs/{lab.name}/node-2/agent.log")
        if doc.get("reason") == reason and "refused tunnel peer" in str(doc.get("msg"))
    ]


def refused(lab: Lab, reason: str) -> float:
    body = admin(lab, "node-2", "/metrics").body
    return metric(body, "smesh_peers_refused_total", f'reason="{reason}"')


def assert_refused(lab: Lab, proc: subprocess.CompletedProcess[str], reason: str) -> None:
    """The peer got nothing through, pod-3's agent said why, and counted it."""
    assert proc.returncode != 0, proc.stdout
    assert proc.stdout in {"", "000"}  # no status from pod-3's app (nor a proxy answer)
    wait(lambda: refused(lab, reason) >= 1)
    lines = refusals(lab, reason)
    assert lines, f"no log line refusing a peer for {reason}"
    assert lines[0]["pod"] == "pod-3"
    still_serving(lab)


def test_the_refusal_metric_is_exported_at_zero_from_the_start(lab: Lab) -> None:
    body = admin(lab, "node-2", "/metrics").body
    for reason in ("foreign_trust_domain", "unknown_address", "identity_mismatch"):
        assert f'\nsmesh_peers_refused_total{{reason="{reason}"}} 0.0\n'.encode() in body


def test_a_certificate_of_another_trust_domain_from_the_right_pod(lab: Lab, tmp_path: Path) -> None:
    # Chains to the lab's own root (a CA can sign any trust domain), used from pod-1.
    cert = credential(tmp_path, lab_ca(lab), "pod-1", trust_domain="evil.example")
    proc = via_tunnel(lab, f"{POD3}:8080", cert, member="pod-1")
    assert_refused(lab, proc, "foreign_trust_domain")
    line = refusals(lab, "foreign_trust_domain")[0]
    assert line["peer_identity"] == "spiffe://evil.example/ns/default/sa/pod-1"
    assert line["peer_address"] == "198.18.1.2"


def test_a_valid_certificate_from_another_pods_address(lab: Lab, tmp_path: Path) -> None:
    proc = via_tunnel(
        lab, f"{POD3}:8080", credential(tmp_path, lab_ca(lab), "pod-1"), member="pod-2"
    )
    assert_refused(lab, proc, "identity_mismatch")
    line = refusals(lab, "identity_mismatch")[0]
    assert line["peer_identity"] == "spiffe://cluster.local/ns/default/sa/pod-1"
    assert line["peer_address"] == "198.18.1.3"  # pod-2's
    assert "default/pod-2" in str(line["msg"])


def test_a_pods_certificate_from_outside_every_pod(lab: Lab, tmp_path: Path) -> None:
    proc = via_tunnel(lab, f"{POD3}:8080", credential(tmp_path, lab_ca(lab), "pod-1"))
    assert_refused(lab, proc, "unknown_address")


def test_a_removed_pods_certificate_from_its_old_address(lab: Lab, tmp_path: Path) -> None:
    cert = credential(tmp_path, lab_ca(lab), "pod-2")  # pod-2's, as a thief kept it
    proc = via_tunnel(lab, f"{POD3}:8080", cert, member="pod-2")
    assert proc.stdout == "200", proc.stderr  # it works while pod-2 exists...
    set_meshed(lab, "pod-2", None)  # ...and pod-2 is deleted
    wait(lambda: "pod-2" not in meshed_here(lab, "node-1"))
    # node-2's agent, which answers the tunnel, polls the same directory on its own
    wait(
        lambda: (
            not [
                w
                for w in admin(lab, "node-2", "/debug/workloads").json()["registry"]
                if "198.18.1.3" in w["ips"]
            ]
        )
    )
    # its namespace and address are still there (a pod's sandbox outlives its workload entry)
    proc = via_tunnel(lab, f"{POD3}:8080", cert, member="pod-2")
    assert_refused(lab, proc, "unknown_address")
    assert "198.18.1.3" in str(refusals(lab, "unknown_address")[0]["msg"])
