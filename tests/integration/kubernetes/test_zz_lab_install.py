"""smesh installed into a lab cluster from its Helm chart: `lab up --kubernetes` (no flag).

One 2-node lab for the module (tests run in file order; the last one brings it down). The
lab renders the chart, applies it with kubectl and creates the CA Secret; its kubelets run
the agent DaemonSet (its init container chains smesh-cni into each node's own CNI
configuration) and the controller Deployment as pods. Two Deployments in opted-in
namespaces then talk over mutual TLS with certificates the agents obtained through CSRs.

Runs last of this directory on purpose, as a known bug is open: after a chart-installed lab,
a later process-agent lab's test_lab_mesh fails after a scale-down (connections to the
remaining pod reset; reproduced twice on 2026-12-03, root cause not yet found; the host's
nft ruleset, cgroup BPF attachments, bpffs, CNI and smesh directories showed no difference).
"""

from __future__ import annotations

import base64
import collections.abc
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from smesh.jsonlines import whole_records
from smesh.lab import kubepaths, state
from tests.integration.kubernetes.clusterkit import (
    ECHO_SERVER,
    TRUST,
    Footprint,
    agent_pod,
    command_running,
    container,
    container_log,
    deployed,
    in_control,
    kubectl,
    kubernetes_lab,
    listing,
    mesh_namespace,
    running,
    sandbox_of,
    smesh_pods,
    wait_for,
)
from tests.integration.labkit import SMESH, Lab, smesh

MARKER = f"smi{secrets.token_hex(6)}"
SIGNER = "smesh.io/workload-identity"


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    with kubernetes_lab("ki", "--nodes", "2") as lab:  # the chart: --kubernetes's default
        items = [
            mesh_namespace("shop"),
            *deployed("shop", "web", [container(["python3", "-c", ECHO_SERVER])]),
            mesh_namespace("front"),
            *deployed("front", "client", [container(["sleep", "infinity"])]),
        ]
        kubectl(lab, "apply", "-f", "-", stdin=listing(items))
        yield lab


def access(lab: Lab, node: str) -> list[dict[str, Any]]:
    """The access-log records of *node*'s agent pod (its container log, JSON lines)."""
    lines = whole_records(container_log(lab, agent_pod(lab, node), "agent"))
    return [r for r in lines if r.get("logger") == "smesh.access"]


def test_the_chart_runs_the_agents_and_the_controller_as_pods(cluster: Lab) -> None:
    found = smesh_pods(cluster)
    agents = [p for name, p in found.items() if name.startswith("smesh-agent-")]
    controllers = [p for name, p in found.items() if name.startswith("smesh-controller-")]
    assert sorted(p["spec"]["nodeName"] for p in agents) == ["node-1", "node-2"]
    assert len(controllers) == 2
    for pod in agents:
        status = pod["status"]
        assert status["phase"] == "Running"
        init = status["initContainerStatuses"][0]
        assert (init["name"], init["state"]["terminated"]["exitCode"]) == ("install-cni", 0)
        assert status["containerStatuses"][0]["ready"] is True
        # the init container chained smesh-cni into that node's own network, which its
        # kubelet runs; the plugin's socket is the node's agent's
        node = pod["spec"]["nodeName"]
        conf = kubepaths.node_cni_conf_dir(cluster.name, node) / kubepaths.CONFLIST_NAME
        plugins = json.loads(conf.read_text())["plugins"]
        assert [p["type"] for p in plugins] == ["bridge", "smesh-cni"]
        assert plugins[1]["agentSocket"] == "/run/smesh/cni.sock"
        root = kubepaths.node_root(cluster.name, node)
        assert (root / "run/smesh/cni.sock").is_socket()
        assert (kubepaths.node_cni_bin_dir(cluster.name, node) / "smesh-cni").is_file()

    def status() -> dict[str, Any]:
        return json.loads(smesh("lab", "status", "--name", cluster.name, "--json").stdout)  # type: ignore[no-any-return]

    assert status()["install"] == "chart"
    # an admin request may miss its 2 s on a loaded machine: healthy within a few tries
    wait_for(
        "both agent pods healthy in lab status",
        lambda: [n["agent_health"] for n in status()["nodes"]] == ["ready", "ready"],
        timeout=30,
    )
    # the agents are pods: status names each node's, and no lab process stands for them
    by_node = {p["spec"]["nodeName"]: f"smesh-system/{p['metadata']['name']}" for p in agents}
    assert {n["name"]: (n["agent_pod"], n["agent_pid"]) for n in status()["nodes"]} == {
        node: (pod, None) for node, pod in by_node.items()
    }
    table = smesh("lab", "status", "--name", cluster.name).stdout
    assert "AGENT POD" in table
    assert by_node["node-1"] in table
    for verb in ("restart-agent", "stop-agent"):
        refused = smesh("lab", verb, "--name", cluster.name, "node-1", check=False)
        assert refused.returncode != 0
        assert "runs its agents as pods" in refused.stderr
        assert "--install processes" in refused.stderr
    for pod in controllers:
        assert pod["spec"]["securityContext"]["runAsUser"] == 65532
        assert pod["status"]["containerStatuses"][0]["ready"] is True
        # the controller really runs as 65532 from the checkout's .venv
        pid = sandbox_of(cluster, pod)["containers"]["controller"]["pid"]
        command_running(pid)  # past the lab kubelet's setpriv, which sets the ids
        status = Path(f"/proc/{pid}/status").read_text()
        uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()
        assert uids[1:] == ["65532"] * 4
        assert "controller" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()


def test_deployments_talk_over_mutual_tls_with_certificates_from_csrs(cluster: Lab) -> None:
    web = running(cluster, "-n", "shop", "-l", "app=web", count=2)
    clients = running(cluster, "-n", "front", "-l", "app=client", count=2)
    client = next(p for p in clients.values() if p["spec"]["nodeName"] == "node-1")
    member = f"front/{client['metadata']['name']}"
    before = len(access(cluster, "node-1"))
    for target in web.values():
        ip = target["status"]["podIP"]
        cluster.wait_tcp(member, ip, 8080, timeout=60)
        proc = cluster.exec(
            member, ["curl", "-sS", "--max-time", "20", f"http://{ip}:8080/{MARKER}"]
        )
        assert (proc.returncode, proc.stdout) == (0, f"echo /{MARKER}"), proc.stderr

    def outbound() -> list[dict[str, Any]]:
        records = access(cluster, "node-1")[before:]
        found = [r for r in records if r["direction"] == "outbound" and r["result"] == "ok"]
        return found if len(found) >= 2 else []

    records = wait_for("node-1's outbound access records", outbound, timeout=15)
    assert {r["destination_pod"] for r in records} >= set(web)
    for record in records:
        assert record["identity"] == f"{TRUST}/ns/front/sa/client"
        assert record["peer_identity"] == f"{TRUST}/ns/shop/sa/web"
        assert record["route"] == "tunnel"

    # every identity's certificate came through a CSR of smesh's signer, filed by an agent
    # and approved by the controller (kubectl shows both)
    csrs = json.loads(kubectl(cluster, "get", "csr", "-o", "json"))["items"]
    issued: dict[str, set[str]] = {}
    for csr in csrs:
        assert csr["spec"]["signerName"] == SIGNER
        assert csr["spec"]["username"] == "system:serviceaccount:smesh-system:smesh-agent"
        conditions = {c["type"]: c for c in csr["status"].get("conditions", [])}
        assert conditions["Approved"]["reason"] == "SmeshAutoApproved", csr
        cert = x509.load_pem_x509_certificate(base64.b64decode(csr["status"]["certificate"]))
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        node = csr["spec"]["extra"]["authentication.kubernetes.io/pod-name"][0]
        for uri in uris.get_values_for_type(x509.UniformResourceIdentifier):
            issued.setdefault(uri, set()).add(node)
    for identity in (f"{TRUST}/ns/front/sa/client", f"{TRUST}/ns/shop/sa/web"):
        assert len(issued.get(identity, set())) == 2, issued  # one per node's agent
    table = kubectl(cluster, "get", "csr")
    assert "Approved,Issued" in table
    assert SIGNER in table


def test_install_check_passes_against_the_lab(cluster: Lab) -> None:
    admin = str(kubepaths.admin_kubeconfig(cluster.name))
    proc = in_control(cluster, *SMESH, "install", "check", "--kubeconfig", admin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "agent on node-1:" in proc.stdout
    assert "agent on node-2:" in proc.stdout
    assert "checks passed" in proc.stdout


def test_lab_logs_of_a_node_is_its_agent_pods_log(cluster: Lab) -> None:
    logs = smesh("lab", "logs", "--name", cluster.name, "node-2").stdout.splitlines()
    assert logs
    assert all(json.loads(line)["level"] for line in logs)  # JSON lines, as agents log
    assert any("capture mode ebpf" in line for line in logs)


def test_lab_down_leaves_nothing(cluster: Lab) -> None:
    footprint = Footprint.of(cluster)
    assert footprint.links  # the agent pods pinned their capture under the lab's pin directory

    smesh("lab", "down", "--name", cluster.name)
    footprint.assert_gone()
    assert not state.directory(cluster.name).exists()
