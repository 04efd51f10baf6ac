"""`smesh lab up --kubernetes`: a real control plane, lab kubelets, pods from kubectl.

One unmeshed 2-node cluster for the whole module (its control plane takes 10-20 s to start);
the tests run in file order and the last one brings it down and checks that nothing is left.
"""

from __future__ import annotations

import collections.abc
import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.lab import state
from smesh.linux import cgroups, netns
from tests.integration.kubernetes.clusterkit import (
    kubectl,
    kubernetes_lab,
    pods,
    running,
    sandbox_of,
    wait_for,
)
from tests.integration.labkit import Lab, smesh

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: web}}
      containers:
      - name: http
        image: none
        command: ["python3", "-m", "http.server", "8080"]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: node-1
  containers:
  - {name: main, image: none, command: ["sleep", "infinity"]}
"""

EXTRA = """
apiVersion: v1
kind: Pod
metadata: {name: hostnet}
spec:
  hostNetwork: true
  nodeName: node-2
  containers:
  - {name: main, image: none, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  restartPolicy: OnFailure
  containers:
  - {name: main, image: none, command: ["sh", "-c", "exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: none, command: ["sh", "-c", "echo done $POD", "--"],
     env: [{name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]}
"""


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    with kubernetes_lab("k", "--no-mesh") as lab:
        yield lab


def test_nodes_register_ready_with_leases(cluster: Lab) -> None:
    nodes = json.loads(kubectl(cluster, "get", "nodes", "-o", "json"))["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["node-1", "node-2"]
    for node in nodes:
        k = node["metadata"]["name"].removeprefix("node-")
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"
        assert node["spec"]["podCIDRs"] == [f"198.18.{k}.0/24", f"fd00:198:18:{k}::/64"]
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [f"198.19.0.{k}", f"fd00:198:19::{k}"]
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == node["metadata"]["name"]
        assert "node-role.kubernetes.io/worker" in node["metadata"]["labels"]
        assert int(node["status"]["allocatable"]["pods"]) > 0
    leases = json.loads(kubectl(cluster, "get", "leases", "-n", "kube-node-lease", "-o", "json"))
    assert sorted(x["spec"]["holderIdentity"] for x in leases["items"]) == ["node-1", "node-2"]


def test_deployment_pods_run_on_their_nodes_and_reach_each_other(cluster: Lab) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=WEB)
    web = running(cluster, "-l", "app=web", count=2)
    client = running(cluster, "--field-selector", "metadata.name=client", count=1)["client"]
    assert sorted(p["spec"]["nodeName"] for p in web.values()) == ["node-1", "node-2"]
    root = cgroups.v2_root()
    for pod in [*web.values(), client]:
        k = pod["spec"]["nodeName"].removeprefix("node-")
        ips = [entry["ip"] for entry in pod["status"]["podIPs"]]
        assert ipaddress.ip_address(ips[0]) in ipaddress.ip_network(f"198.18.{k}.0/24")
        assert ipaddress.ip_address(ips[1]) in ipaddress.ip_network(f"fd00:198:18:{k}::/64")
        assert int(ips[0].rsplit(".", 1)[1]) >= 10  # above the static lab's addresses
        assert pod["status"]["hostIP"] == f"198.19.0.{k}"
        statuses = pod["status"]["containerStatuses"]
        assert statuses[0]["ready"]
        assert "running" in statuses[0]["state"]
        sandbox = sandbox_of(cluster, pod)
        uid = pod["metadata"]["uid"]
        expected = root / f"smesh-lab-{cluster.name}/node-{k}/kubepods/besteffort/pod{uid}"
        assert Path(sandbox["cgroup"]) == expected
        pid = sandbox["containers"][statuses[0]["name"]]["pid"]
        assert f"/pod{uid}/" in cgroups.of_pid(pid)
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns.inode_of(sandbox["netns"])
    listed = {(p["namespace"], p["name"]): p for p in cluster.status()["kubernetes_pods"]}
    for name, pod in web.items():
        assert listed[("default", name)]["phase"] == "Running"
        assert listed[("default", name)]["ip"] == pod["status"]["podIP"]
    for pod in web.values():
        cluster.wait_tcp("default/client", pod["status"]["podIP"], 8080, timeout=30)
        proc = cluster.exec(
            "default/client",
            [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                f"http://{pod['status']['podIP']}:8080/",
            ],
        )
        assert proc.stdout == "200", proc.stderr


def test_scale_to_zero_releases_everything(cluster: Lab) -> None:
    web = running(cluster, "-l", "app=web", count=2)
    sandboxes = [sandbox_of(cluster, pod) for pod in web.values()]
    kubectl(cluster, "scale", "deployment", "web", "--replicas=0")
    wait_for("the web pods to be gone", lambda: not pods(cluster, "-l", "app=web"))
    ipam = state.directory(cluster.name) / "nodes"
    leased = {p.name for p in ipam.glob("*/cni/ipam/smesh-lab/*")}
    for sandbox in sandboxes:
        assert not netns.exists(sandbox["netns"])
        assert not Path(sandbox["cgroup"]).exists()
        assert not set(sandbox["ips"]) & leased
        assert not list(ipam.glob(f"*/pods/{sandbox['uid']}"))


def test_host_network_restart_policies_and_kubelet_restart(cluster: Lab) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=EXTRA)
    hostnet = running(cluster, "--field-selector", "metadata.name=hostnet", count=1)["hostnet"]
    assert hostnet["status"]["podIP"] == "198.19.0.2"
    pid = sandbox_of(cluster, hostnet)["containers"]["main"]["pid"]
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == netns.inode_of(f"{cluster.name}.node-2")
    assert "198.19.0.2/24" in cluster.exec("default/hostnet", ["ip", "-br", "addr"]).stdout

    def restarted() -> bool:
        status = pods(cluster)["flaky"]["status"]["containerStatuses"][0]
        return status["restartCount"] >= 1 and bool(status["lastState"].get("terminated"))

    wait_for("flaky to be restarted", restarted)
    flaky = pods(cluster)["flaky"]["status"]["containerStatuses"][0]
    assert flaky["lastState"]["terminated"]["exitCode"] == 3

    once = wait_for(
        "once to succeed",
        lambda: (p := pods(cluster)["once"])["status"].get("phase") == "Succeeded" and p,
    )
    assert not netns.exists(sandbox_of(cluster, once)["netns"])  # released when it ended
    log = state.directory(cluster.name) / "nodes" / once["spec"]["nodeName"] / "pods"
    assert (log / once["metadata"]["uid"] / "main.log").read_text() == "done once\n"

    # A restarted kubelet adopts the client (same process) and can still delete it.
    client = pods(cluster)["client"]
    before = sandbox_of(cluster, client)
    smesh("lab", "restart-kubelet", "--name", cluster.name, "node-1")
    time.sleep(2)
    assert (
        sandbox_of(cluster, client)["containers"]["main"]["pid"]
        == before["containers"]["main"]["pid"]
    )
    assert state.start_time_of(before["containers"]["main"]["pid"]) is not None
    kubectl(cluster, "delete", "pod", "client", "--timeout=60s")
    assert not netns.exists(before["netns"])
    assert state.start_time_of(before["containers"]["main"]["pid"]) is None


def test_a_failing_cni_add_keeps_the_pod_pending_with_an_event_then_retries(
    cluster: Lab,
) -> None:
    # A plugin missing from CNI_PATH stands in for any failing ADD (e.g. an agent away).
    plugin = state.directory(cluster.name) / "kubernetes" / "cni" / "bin" / "bridge"
    aside = plugin.with_name("bridge.aside")
    plugin.rename(aside)
    try:
        kubectl(
            cluster,
            "run",
            "late",
            "--image=none",
            "--restart=Never",
            "--command",
            "--",
            "sleep",
            "infinity",
        )

        def failed_event() -> list[dict[str, Any]]:
            return json.loads(
                kubectl(
                    cluster,
                    "get",
                    "events",
                    "--field-selector",
                    "involvedObject.name=late,reason=FailedCreatePodSandBox",
                    "-o",
                    "json",
                )
            )["items"]

        events = wait_for("a FailedCreatePodSandBox event", failed_event)
        assert "failed to find plugin 'bridge'" in events[0]["message"]
        assert events[0]["type"] == "Warning"
        late = pods(cluster)["late"]
        assert late["status"]["phase"] == "Pending"
        waiting = late["status"]["containerStatuses"][0]["state"]["waiting"]
        assert waiting["reason"] == "ContainerCreating"
        assert not any(
            ns.startswith(f"{cluster.name}.k8s-{late['metadata']['uid'][:8]}")
            for ns in netns.list_names()
        )  # the failed sandbox was undone
    finally:
        aside.rename(plugin)
    running(cluster, "--field-selector", "metadata.name=late", count=1)


def test_lab_down_leaves_nothing(cluster: Lab) -> None:
    lab = state.load(cluster.name)
    assert lab is not None
    processes = [*lab.control_plane.values(), *lab.kubelets.values(), *lab.proxies.values()]
    assert len(processes) == 8
    assert all(p.alive() for p in processes)
    running(cluster, "--field-selector", "metadata.name=hostnet", count=1)
    root = cgroups.v2_root() / f"smesh-lab-{cluster.name}"
    # Everything in the lab's cgroup (the pods' processes too), told apart from reused pids.
    started = [(pid, state.start_time_of(pid)) for pid in cgroups.pids(root)]
    smesh("lab", "down", "--name", cluster.name)
    assert not [ns for ns in netns.list_names() if ns.startswith(f"{cluster.name}.")]
    assert not root.exists()
    assert not state.directory(cluster.name).exists()
    assert not [p for p in processes if p.alive()]
    assert not [pid for pid, start in started if start and state.start_time_of(pid) == start]
