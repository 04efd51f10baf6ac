"""Helpers for tests that drive a whole `smesh lab up --kubernetes` cluster through the CLI.

Shared by the cluster tests (test_lab_cluster.py, test_lab_mesh.py, the Service tests): bring a
lab up for a module and always down again, kubectl in the lab, wait for pods, read what the
kubelet recorded of a pod's sandbox, watch a node's links with tcpdump, and read a process
agent's access log and metrics.
"""

from __future__ import annotations

import collections.abc
import contextlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smesh.agent import client as admin_client
from smesh.capture import libbpf, pins
from smesh.lab import kubepaths, services, state
from smesh.lab.controlplane import DEFAULT_BIN_DIR
from smesh.linux import cgroups, netns
from tests.conftest import in_ci
from tests.integration import labkit
from tests.integration.labkit import Lab, Lines, smesh, unique_name


@contextlib.contextmanager
def kubernetes_lab(prefix: str, *args: str) -> collections.abc.Iterator[Lab]:
    """A lab up with ``--kubernetes`` and *args*; brought down even if a test fails.

    Skips (fails under CI) when the control plane or CoreDNS is not built.
    """
    message = ""
    if not (DEFAULT_BIN_DIR / "kube-proxy").is_file():
        message = f"the control plane is not built in {DEFAULT_BIN_DIR}: run `make kubernetes`"
    elif not services.COREDNS.is_file():
        message = f"CoreDNS is not built at {services.COREDNS}: run `make coredns`"
    if message:
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    lab = Lab(unique_name(prefix))
    try:
        smesh("lab", "up", "--name", lab.name, "--kubernetes", *args, timeout=240)
        yield lab
    finally:
        lab.stop_background()
        smesh("lab", "down", "--name", lab.name, check=False)


def kubectl(lab: Lab, *args: str, stdin: str | None = None) -> str:
    return smesh("lab", "kubectl", "--name", lab.name, "--", *args, input=stdin).stdout


#: What the lab kubelet's pid for a container runs before the container's own command:
#: unshare, the mount script, setpriv (smesh.lab.kubelet_exec). A container's ids and
#: capabilities are its own only past them.
EXEC_CHAIN = frozenset({"unshare", "sh", "setpriv"})


def command_running(pid: int) -> str:
    """The name of container process *pid*'s own command, once it has exec'd past the lab
    kubelet's chain (which reports the container running from its fork). Not for a command
    that is itself ``sh`` (it would look like the chain all along)."""

    def name() -> str:
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            raise AssertionError(f"container process {pid} exited before its command ran") from None
        return "" if comm in EXEC_CHAIN else comm

    found: str = wait_for(f"process {pid} to run its container's command", name, 30)
    return found


def pods(lab: Lab, *selector: str) -> dict[str, dict[str, Any]]:
    items = json.loads(kubectl(lab, "get", "pods", "-o", "json", *selector))["items"]
    return {p["metadata"]["name"]: p for p in items}


def wait_for(what: str, check: collections.abc.Callable[[], Any], timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def running(lab: Lab, *selector: str, count: int) -> dict[str, dict[str, Any]]:
    def check() -> dict[str, dict[str, Any]] | None:
        found = pods(lab, *selector)
        ok = len(found) == count and all(
            p["status"].get("phase") == "Running" and p["status"].get("podIP")
            for p in found.values()
        )
        return found if ok else None

    return wait_for(f"{count} running pods {selector}", check)  # type: ignore[no-any-return]


#: A container that only waits (a client pod's).
SLEEPER = {"name": "main", "image": "none", "command": ["sleep", "infinity"]}


def pod(name: str, namespace: str, node: str, **spec: Any) -> dict[str, Any]:
    """A Pod object bound to *node* that sleeps (``labels=`` and other spec fields in *spec*)."""
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 5,
            "containers": [SLEEPER],
            **spec,
        },
    }


def metric(lab: Lab, node: str, name: str, labels: str) -> float:
    """The value of *name*{*labels*} on *node*'s agent (0 if absent), from its admin port."""
    reply = admin_client.get("127.0.0.1", 15020, "/metrics", netns=f"{lab.name}.{node}")
    for line in reply.body.decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


access = labkit.access  # a Kubernetes lab's process agents log where a plain lab's do


def smesh_pods(lab: Lab) -> dict[str, dict[str, Any]]:
    """The pods of a chart-installed smesh (agents and controllers)."""
    return pods(lab, "-n", "smesh-system")


def container_log(lab: Lab, pod: dict[str, Any], container: str) -> Path:
    """Where the lab kubelet writes *container*'s output of *pod*."""
    node: str = pod["spec"]["nodeName"]
    uid: str = pod["metadata"]["uid"]
    return kubepaths.pods_dir(lab.name, node) / uid / f"{container}.log"


def agent_pod(lab: Lab, node: str) -> dict[str, Any]:
    """The chart's agent pod on *node* (exactly one)."""
    agents = [
        p
        for name, p in smesh_pods(lab).items()
        if name.startswith("smesh-agent-") and p["spec"]["nodeName"] == node
    ]
    assert len(agents) == 1, agents
    return agents[0]


def in_control(lab: Lab, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run *argv* in ``NAME.control`` (where the API server listens), as the cluster admin."""
    env = {**os.environ, "KUBECONFIG": str(kubepaths.admin_kubeconfig(lab.name))}
    return subprocess.run(
        ["ip", "netns", "exec", f"{lab.name}.control", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def sandbox_of(lab: Lab, pod: dict[str, Any]) -> dict[str, Any]:
    """What the lab kubelet recorded of *pod*'s sandbox (netns, cgroup, ips, containers)."""
    node, uid = pod["spec"]["nodeName"], pod["metadata"]["uid"]
    path = state.directory(lab.name) / "nodes" / node / "pods" / uid / "sandbox.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@contextlib.contextmanager
def sniffing(lab: Lab, member: str, interface: str = "eth0") -> collections.abc.Iterator[Lines]:
    """tcpdump (TCP packets with their payload as ASCII) on *member*'s *interface*."""
    with labkit.sniffing(lab, member, interface, payloads=True) as packets:
        yield packets


#: The lab's trust domain, as SPIFFE identities in access logs start.
TRUST = "spiffe://cluster.local"
#: A pod's HTTP server (python3 -c): answers GET with "echo PATH".
ECHO_SERVER = """
import http.server
class Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        reply = b"echo " + self.path.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Echo).serve_forever()
"""


@dataclass(frozen=True)
class Footprint:
    """What a running lab holds on the machine, to check `lab down` removed all of it."""

    name: str
    cgroup: Path  # the lab's cgroup
    started: list[tuple[int, int | None]]  # (pid, start time) of every process in it
    pin_dir: Path  # the lab's bpffs pins
    links: frozenset[int]  # the BPF links its agents pinned

    @classmethod
    def of(cls, lab: Lab, nodes: tuple[str, ...] = ("node-1", "node-2")) -> Footprint:
        root = cgroups.v2_root() / f"smesh-lab-{lab.name}"
        pin_dir = state.bpf_pin_dir(lab.name)
        links: set[int] = set()
        for node in nodes:
            with pins.PinnedCapture(pin_dir / node) as pinned:
                links |= {info.id for _pin, info in pinned.links()}
        started = [(pid, state.start_time_of(pid)) for pid in cgroups.pids(root)]
        return cls(lab.name, root, started, pin_dir, frozenset(links))

    def assert_gone(self) -> None:
        assert not [ns for ns in netns.list_names() if ns.startswith(f"{self.name}.")]
        assert not self.cgroup.exists()
        assert not [p for p, start in self.started if start and state.start_time_of(p) == start]
        assert not self.pin_dir.exists()
        assert not self.links & {link.id for link in libbpf.links()}


def mesh_namespace(name: str, *, meshed: bool = True) -> dict[str, Any]:
    """A Namespace, opted in to the mesh unless *meshed* is false."""
    labels = {"smesh.io/mesh": "enabled"} if meshed else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def deployed(
    namespace: str,
    name: str,
    containers: list[dict[str, Any]],
    *,
    node: str | None = None,
    replicas: int = 2,
    **pod_spec: Any,
) -> list[dict[str, Any]]:
    """A ServiceAccount *name* and a Deployment *name* whose pods run as it.

    One pod on *node* when it is given; otherwise *replicas* pods spread one per node (a
    hostname spread constraint the scheduler must honour), so a test sees both a local and
    a remote peer. Pods stop within 5 s unless *pod_spec* says otherwise.
    """
    placement: dict[str, Any]
    if node is not None:
        replicas = 1
        placement = {"nodeSelector": {"kubernetes.io/hostname": node}}
    else:
        spread = {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": name}},
        }
        placement = {"topologySpreadConstraints": [spread]}
    spec = {
        "serviceAccountName": name,
        **placement,
        "terminationGracePeriodSeconds": 5,
        "containers": containers,
        **pod_spec,
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            },
        },
    ]


def container(command: list[str], name: str = "main", **extra: Any) -> dict[str, Any]:
    """A pod's container running *command* from the lab's "image" (the node's own files)."""
    return {"name": name, "image": "none", "command": command, **extra}


def listing(items: list[dict[str, Any]]) -> str:
    """*items* as one `kubectl apply -f -` document."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
