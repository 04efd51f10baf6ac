"""`smesh install check`'s judgements over API objects, as the API server sends them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smesh.install import check
from smesh.kubernetes.errors import ApiUnreachable

NOW = dt.datetime(2026, 12, 3, 1, 0, tzinfo=dt.UTC)


def stamp(delta: float) -> str:
    return (NOW + dt.timedelta(seconds=delta)).isoformat().replace("+00:00", "Z")


def established(status: str = "True", message: str = "") -> dict[str, Any]:
    return {
        "spec": {"versions": [{"name": "v1alpha1"}]},
        "status": {"conditions": [{"type": "Established", "status": status, "message": message}]},
    }


def test_crd() -> None:
    name = "authorizationpolicies.smesh.io"
    assert check.crd(name, established()).line() == f"ok    CRD {name}: Established (v1alpha1)"
    missing = check.crd(name, None)
    assert not missing.ok
    assert "kubectl apply -f deploy/smesh.yaml" in missing.fix
    pending = check.crd(name, established("False", "the names are not accepted"))
    assert not pending.ok
    assert pending.detail == "the names are not accepted"


def test_controller_and_its_lease() -> None:
    deployment = {
        "spec": {"replicas": 2},
        "status": {
            "availableReplicas": 1,
            "conditions": [{"type": "Available", "status": "True"}],
        },
    }
    assert check.controller(deployment).detail == "1/2 replicas available"
    down = {
        "spec": {"replicas": 2},
        "status": {
            "conditions": [
                {
                    "type": "Available",
                    "status": "False",
                    "message": "Deployment does not have minimum availability.",
                }
            ]
        },
    }
    result = check.controller(down)
    assert not result.ok
    assert result.detail == "0/2 available: Deployment does not have minimum availability."
    assert "logs deploy/smesh-controller" in result.fix

    held = {"spec": {"holderIdentity": "ctl-1", "renewTime": stamp(-5), "leaseDurationSeconds": 15}}
    assert (
        check.lease(held, NOW).line()
        == "ok    controller Lease smesh-system/smesh-controller: held by ctl-1"
    )
    lapsed = {
        "spec": {"holderIdentity": "ctl-1", "renewTime": stamp(-40), "leaseDurationSeconds": 15}
    }
    assert check.lease(lapsed, NOW).detail == "ctl-1 stopped renewing it 40 s ago"
    assert not check.lease(None, NOW).ok
    assert not check.lease({"spec": {}}, NOW).ok


def root_pem(now: dt.datetime) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smesh root")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_trust_bundle() -> None:
    now = NOW
    pem = root_pem(now)
    result = check.trust_bundle({"data": {"roots.pem": pem}}, now)
    assert result.ok, result.line()
    assert result.detail.startswith("1 valid root(s)")
    expired = check.trust_bundle({"data": {"roots.pem": pem}}, now + dt.timedelta(days=400))
    assert not expired.ok
    assert "smesh ca rotate" in expired.fix
    assert (
        check.trust_bundle({"data": {"roots.pem": ""}}, now).detail
        == "roots.pem holds no certificate"
    )
    assert "smesh ca init" in check.trust_bundle(None, now).fix


def node(name: str, kernel: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"nodeInfo": {"kernelVersion": kernel}}}


def test_node_kernel() -> None:
    assert check.node_kernel(node("n1", "6.1.0-28-cloud-amd64")).ok
    assert check.node_kernel(node("n1", "5.10.0-33-amd64")).ok
    old = check.node_kernel(node("n1", "5.4.0-150-generic"))
    assert not old.ok
    assert old.detail == "Linux 5.4.0-150-generic is older than 5.10"
    assert "BTF" in old.fix


def agent_pod(name: str, node_name: str, ready: bool, **container: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node_name},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "agent", **container}],
        },
    }


def test_agents_one_line_per_node_with_the_agents_own_error() -> None:
    ds = {"status": {"numberReady": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3}}
    nodes = [node("n1", "6.1"), node("n2", "6.1"), node("n3", "6.1")]
    pods = [
        agent_pod("smesh-agent-a", "n1", True),
        agent_pod(
            "smesh-agent-b",
            "n2",
            False,
            restartCount=4,
            state={"waiting": {"reason": "CrashLoopBackOff"}},
            lastState={
                "terminated": {
                    "exitCode": 2,
                    "message": "starting\nsmesh: error: no cgroup v2 hierarchy is mounted",
                }
            },
        ),
    ]
    lines = [c.line() for c in check.agents(ds, nodes, pods)]
    assert lines[0] == "ok    agent DaemonSet smesh-system/smesh-agent: 1/3 ready, 3 up to date"
    assert lines[1] == "ok    agent on n1: smesh-agent-a Ready (capture attached)"
    assert lines[2].startswith(
        "FAIL  agent on n2: smesh-agent-b not Ready: CrashLoopBackOff; last exit: smesh: error: "
        "no cgroup v2 hierarchy is mounted; 4 restart(s); fix: see `kubectl -n smesh-system logs "
        "smesh-agent-b -c agent --previous`"
    )
    assert lines[3].startswith("FAIL  agent on n3: no agent pod")
    assert [c.ok for c in check.agents(None, nodes, pods)] == [False]


def test_an_old_agent_pod_lingering_after_an_update_does_not_stand_for_its_node() -> None:
    ds = {"status": {"numberReady": 1, "desiredNumberScheduled": 1, "updatedNumberScheduled": 0}}
    old = agent_pod("smesh-agent-old", "n1", True)
    old["metadata"]["deletionTimestamp"] = "2026-12-03T07:00:00Z"
    new = agent_pod("smesh-agent-new", "n1", False, state={"waiting": {"reason": "Crashed"}})
    lines = [c.line() for c in check.agents(ds, [node("n1", "6.1")], [old, new])]
    assert lines[1].startswith("FAIL  agent on n1: smesh-agent-new not Ready: Crashed")
    new["status"]["conditions"][0]["status"] = "True"
    lines = [c.line() for c in check.agents(ds, [node("n1", "6.1")], [old, new])]
    assert lines[1] == (
        "ok    agent on n1: smesh-agent-new Ready (capture attached); "
        "1 old agent pod(s) serving their last connections"
    )


def test_csrs_pending_too_long_fail() -> None:
    def csr(name: str, age: float, **status: Any) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "creationTimestamp": stamp(-age)},
            "spec": {"signerName": "smesh.io/workload-identity"},
            "status": status,
        }

    issued = csr("a", 500, certificate="Zm9v")
    denied = csr("b", 500, conditions=[{"type": "Denied", "status": "True"}])
    other = {"metadata": {"name": "x"}, "spec": {"signerName": "kubernetes.io/kubelet-serving"}}
    fine = check.csrs([issued, denied, csr("c", 5), other], NOW)
    assert (
        fine.line()
        == "ok    certificates (smesh.io/workload-identity): 1 issued, 1 denied, 1 pending"
    )
    stuck = check.csrs([issued, csr("d", 120)], NOW)
    assert not stuck.ok
    assert "1 pending for over 60 s (e.g. d)" in stuck.detail


def test_run_stops_at_an_unreachable_api_server() -> None:
    def get(path: str) -> dict[str, Any] | None:
        raise ApiUnreachable("connection refused")

    (only,) = check.run("https://k:6443", get, lambda *a, **k: [], NOW)
    assert only.line().startswith("FAIL  API server: https://k:6443: connection refused; fix:")


def test_run_on_an_empty_cluster_fails_every_install_check() -> None:
    def get(path: str) -> dict[str, Any] | None:
        return {"gitVersion": "v1.37.2"} if path == "/version" else None

    results = check.run("https://k:6443", get, lambda *a, **k: [], NOW)
    assert [r.ok for r in results] == [True, False, False, False, False, False, True]
    assert all(r.fix for r in results if not r.ok)
