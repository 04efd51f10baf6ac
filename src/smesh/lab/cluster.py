"""The Kubernetes control plane of a lab: etcd, kube-apiserver, controller manager, scheduler.

They run in the lab's ``NAME.control`` namespace, on the fabric at 198.19.0.250, as long-lived
processes in the lab's ``control`` cgroup (spawned like the agents, recorded by pid in the lab
state, so ``lab down`` ends them and their cgroup). Every component has its own client
certificate from the lab's Kubernetes CA (:mod:`smesh.lab.controlplane` makes the PKI), so the
API server's authorizers see the same users as in a kubeadm cluster: ``system:node:node-k`` in
``system:nodes`` for the kubelets (Node authorizer + NodeRestriction), the controllers' own
users, and ``smesh-agent:node-k`` in ``smesh:agents`` for the node agents.

This process (``lab up``, ``lab status``) talks to the API server only from a thread inside
``NAME.control``: the machine's own network namespace never reaches the lab's API server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from smesh.lab import agents, kubepaths, services, state
from smesh.lab.controlplane import (
    DEFAULT_BIN_DIR,
    ControlPlaneError,
    MissingBinaries,
    Pki,
    apiserver_argv,
    issue_client_cert,
    make_pki,
    write_kubeconfig,
)
from smesh.lab.topology import CONTROL_IP4, CONTROL_IP6, Topology
from smesh.linux import netns

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kube-proxy",
)
ETCD_URL = "http://127.0.0.1:2379"
AGENT_GROUP = "smesh:agents"
SIGNER_USER = "smesh-signer"
AGENT_ROLE = "smesh:agent"
#: Health ports of the controller manager and the scheduler (their defaults), on loopback.
HEALTH_PORTS = {"kube-controller-manager": 10257, "kube-scheduler": 10259}
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
FRONT_PROXY_CLIENT = "front-proxy-client"


def missing_binaries(bin_dir: Path = DEFAULT_BIN_DIR) -> list[str]:
    return [name for name in BINARIES if not (bin_dir / name).is_file()]


def _pki(lab: str) -> Pki:
    directory = kubepaths.pki_dir(lab)
    return Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "apiserver.crt",
        server_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        sa_key=directory / "sa.key",
        sa_pub=directory / "sa.pub",
    )


def set_up_pki(topo: Topology) -> Pki:
    """The CA, the API server's certificate, and one kubeconfig per client of the API."""
    directory = kubepaths.pki_dir(topo.name)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    hosts = [
        str(CONTROL_IP4),
        str(CONTROL_IP6),
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        str(topo.api_service_ip),
    ]
    pki = make_pki(directory, hosts)
    server = kubepaths.API_SERVER
    write_kubeconfig(kubepaths.admin_kubeconfig(topo.name), server, pki)
    issue_client_cert(pki, FRONT_PROXY_CLIENT, FRONT_PROXY_CLIENT)
    for component in ("kube-controller-manager", "kube-scheduler"):
        user = f"system:{component}"
        client = issue_client_cert(pki, component, user)
        write_kubeconfig(
            kubepaths.component_kubeconfig(topo.name, component), server, pki, user, client
        )
    # the lab's signer reads which pods run where (its entitlements) with the agents' rights
    client = issue_client_cert(pki, "smesh-signer", SIGNER_USER, (AGENT_GROUP,))
    write_kubeconfig(kubepaths.signer_kubeconfig(topo.name), server, pki, SIGNER_USER, client)
    for node in topo.nodes:
        kubepaths.node_dir(topo.name, node.name).mkdir(parents=True, exist_ok=True)
        user = f"system:node:{node.name}"
        client = issue_client_cert(pki, f"kubelet-{node.name}", user, ("system:nodes",))
        path = kubepaths.kubelet_kubeconfig(topo.name, node.name)
        write_kubeconfig(path, server, pki, user, client)
        user = f"smesh-agent:{node.name}"
        client = issue_client_cert(pki, f"agent-{node.name}", user, (AGENT_GROUP,))
        write_kubeconfig(
            kubepaths.agent_kubeconfig(topo.name, node.name), server, pki, user, client
        )
        client = issue_client_cert(pki, f"kube-proxy-{node.name}", services.KUBE_PROXY_USER)
        path = services.kube_proxy_kubeconfig(topo.name, node.name)
        write_kubeconfig(path, server, pki, services.KUBE_PROXY_USER, client)
    return pki


def _argv(lab: str, bin_dir: Path, pki: Pki, service_cidr: str) -> dict[str, list[str]]:
    kube = kubepaths.kube_dir(lab)
    api = [
        *apiserver_argv(
            bin_dir,
            pki,
            ETCD_URL,
            str(CONTROL_IP4),
            kubepaths.API_PORT,
            service_cidr=service_cidr,
        ),
        # A kubelet may change only its own Node and the pods bound to it.
        "--enable-admission-plugins=NodeRestriction",
        # The front proxy's CA, which the controller manager's and the scheduler's delegated
        # authentication read from kube-system/extension-apiserver-authentication (they log
        # errors every few seconds without it). One CA here; kubeadm has a second one.
        f"--requestheader-client-ca-file={pki.ca_cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={kubepaths.pki_dir(lab) / (FRONT_PROXY_CLIENT + '.crt')}",
        f"--proxy-client-key-file={kubepaths.pki_dir(lab) / (FRONT_PROXY_CLIENT + '.key')}",
    ]
    controllers = []
    for component in ("kube-controller-manager", "kube-scheduler"):
        config = kubepaths.component_kubeconfig(lab, component)
        controllers.append(
            [
                str(bin_dir / component),
                f"--kubeconfig={config}",
                f"--authentication-kubeconfig={config}",
                f"--authorization-kubeconfig={config}",
                "--bind-address=127.0.0.1",
                "--leader-elect=false",
            ]
        )
    manager, scheduler = controllers
    manager += [
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_cert}",
        f"--cluster-signing-cert-file={pki.ca_cert}",
        f"--cluster-signing-key-file={pki.ca_key}",
        f"--service-cluster-ip-range={service_cidr}",
    ]
    etcd = [
        str(bin_dir / "etcd"),
        "--name=smesh-lab",
        f"--data-dir={kube / 'etcd'}",
        f"--listen-client-urls={ETCD_URL}",
        f"--advertise-client-urls={ETCD_URL}",
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=smesh-lab=http://127.0.0.1:2380",
        "--unsafe-no-fsync",  # a throw-away store
        "--log-level=warn",
    ]
    return {
        "etcd": etcd,
        "kube-apiserver": api,
        "kube-controller-manager": manager,
        "kube-scheduler": scheduler,
    }


def start(
    lab: state.LabState,
    topo: Topology,
    cgroup_root: Path,
    bin_dir: Path = DEFAULT_BIN_DIR,
    timeout: float = 90.0,
) -> None:
    """Start the four components in order, each ready before the next; record their pids."""
    missing = missing_binaries(bin_dir)
    if missing:
        raise MissingBinaries(f"{', '.join(missing)} not built in {bin_dir}: run `make kubernetes`")
    pki = set_up_pki(topo)
    argv = _argv(topo.name, bin_dir, pki, str(topo.service_cidr))
    cgroup = cgroup_root / topo.cgroup / "control"
    logs = kubepaths.log_dir(topo.name)
    probes: dict[str, Callable[[], bool]] = {
        "etcd": lambda: _etcd_ready(topo),
        "kube-apiserver": lambda: _api_ready(topo.name),
    }
    for component in ("etcd", "kube-apiserver"):
        lab.control_plane[component] = agents.spawn(
            argv[component], cgroup, topo.control_netns, logs / f"{component}.log"
        )
        state.save(lab)
        _wait(topo.name, component, lab.control_plane[component], probes[component], timeout)
    for component in ("kube-controller-manager", "kube-scheduler"):
        lab.control_plane[component] = agents.spawn(
            argv[component], cgroup, topo.control_netns, logs / f"{component}.log"
        )
        state.save(lab)
    for component, port in HEALTH_PORTS.items():
        process = lab.control_plane[component]
        _wait(topo.name, component, process, lambda p=port: _healthz(topo, p), timeout)  # type: ignore[misc]
    _set_up_rbac(topo.name)


def stop_component(lab: state.LabState, component: str, timeout: float = 15.0) -> None:
    """Stop one control-plane component by its recorded pid: SIGTERM, SIGKILL after *timeout*.

    The others keep running (the API server keeps its etcd): a rolling restart of one
    component, as on a real control plane.
    """
    process = _component(lab, component)
    if not process.alive():
        return
    os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.alive():
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
        time.sleep(0.05)


def start_component(
    lab: state.LabState,
    topo: Topology,
    cgroup_root: Path,
    component: str,
    extra_args: Sequence[str] = (),
    *,
    bin_dir: Path = DEFAULT_BIN_DIR,
    timeout: float = 90.0,
) -> state.Process:
    """Start one stopped component again with its usual flags (then *extra_args*, which
    override them: the last of a repeated flag wins); returns once it is healthy.

    The caller saves *lab* (its new pid is recorded in it).
    """
    old = _component(lab, component)
    if old.alive():
        raise ControlPlaneError(f"{component} is running (pid {old.pid}): stop it first")
    argv = [
        *_argv(topo.name, bin_dir, _pki(topo.name), str(topo.service_cidr))[component],
        *extra_args,
    ]
    cgroup = cgroup_root / topo.cgroup / "control"
    log = kubepaths.log_dir(topo.name) / f"{component}.log"
    process = agents.spawn(argv, cgroup, topo.control_netns, log)
    lab.control_plane[component] = process
    probe: Callable[[], bool]
    if component == "etcd":
        probe = lambda: _etcd_ready(topo)  # noqa: E731
    elif component == "kube-apiserver":
        # A loopback-only API server (--bind-address=127.0.0.1) is probed there.
        loopback = any(a == "--bind-address=127.0.0.1" for a in extra_args)
        probe = lambda: _api_ready(topo.name, "127.0.0.1" if loopback else None)  # noqa: E731
    else:
        probe = lambda: _healthz(topo, HEALTH_PORTS[component])  # noqa: E731
    _wait(topo.name, component, process, probe, timeout)
    return process


def _component(lab: state.LabState, component: str) -> state.Process:
    process = lab.control_plane.get(component)
    if process is None:
        raise ControlPlaneError(
            f"no control-plane component {component!r} in lab {lab.name!r} "
            f"(there are: {', '.join(lab.control_plane) or 'none'})"
        )
    return process


def etcd_call(lab: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call to the lab etcd's v3 JSON gateway, from inside ``NAME.control`` (the only
    place it listens: 127.0.0.1 there), e.g. ``kv/compaction``."""

    def call() -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", 2379, timeout=10)
        try:
            conn.request(
                "POST",
                f"/v3/{method}",
                body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ControlPlaneError(f"etcd {method} at {ETCD_URL} in {lab}.control: {exc}") from exc
        finally:
            conn.close()
        if response.status != 200:
            raise ControlPlaneError(
                f"etcd {method}: HTTP {response.status}: {raw.decode(errors='replace'):.200}"
            )
        result: dict[str, Any] = json.loads(raw)
        return result

    return netns.run_in(f"{lab}.control", call)


def etcd_revision(lab: str) -> int:
    """etcd's current revision: the newest resourceVersion of every Kubernetes object."""
    return int(etcd_call(lab, "kv/range", {"key": "AA=="})["header"]["revision"])


def compact_etcd(lab: str) -> int:
    """Compact the lab's etcd at its current revision (every older resourceVersion is gone:
    a watch from one gets 410 Gone); returns that revision."""
    revision = etcd_revision(lab)
    etcd_call(lab, "kv/compaction", {"revision": str(revision), "physical": True})
    return revision


def log_tail(lab: str, component: str, lines: int = 15) -> str:
    try:
        text = (kubepaths.log_dir(lab) / f"{component}.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _wait(
    lab: str, component: str, process: state.Process, probe: Callable[[], bool], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise ControlPlaneError(
                f"{component} exited while starting; its log ends:\n{log_tail(lab, component)}"
            )
        if probe():
            return
        time.sleep(0.2)
    raise ControlPlaneError(
        f"{component} was not ready within {timeout:.0f} s; its log ends:\n"
        f"{log_tail(lab, component)}"
    )


def _etcd_ready(topo: Topology) -> bool:
    def probe() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", 2379, timeout=2)
        try:
            conn.request("GET", "/health")
            return bool(json.loads(conn.getresponse().read()).get("health") == "true")
        except (OSError, ValueError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return netns.run_in(topo.control_netns, probe)


def _healthz(topo: Topology, port: int) -> bool:
    """The controller manager's or scheduler's own health check (self-signed: not verified)."""

    def probe() -> bool:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    return netns.run_in(topo.control_netns, probe)


def _api_ready(lab: str, host: str | None = None) -> bool:
    try:
        status, _ = request(lab, "GET", "/readyz", host=host)
    except ApiCallFailed:
        return False
    return status == 200


class ApiCallFailed(ControlPlaneError):
    """The lab's API server could not be reached from the control namespace."""


def request(
    lab: str,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
    *,
    host: str | None = None,
) -> tuple[int, Any]:
    """One admin request to the lab's API server, made from inside ``NAME.control`` (at
    *host* there, by default its fabric address).

    Returns (HTTP status, decoded JSON or raw text). Only transport failures raise.
    """
    pki = _pki(lab)

    def call() -> tuple[int, Any]:
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
        conn = http.client.HTTPSConnection(
            host or str(CONTROL_IP4), kubepaths.API_PORT, context=context, timeout=10
        )
        try:
            headers = {"Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = content_type
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                return response.status, json.loads(raw)
            except ValueError:
                return response.status, raw.decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            raise ApiCallFailed(f"{method} {path} at {kubepaths.API_SERVER}: {exc}") from exc
        finally:
            conn.close()

    return netns.run_in(f"{lab}.control", call)


def create(lab: str, path: str, obj: dict[str, Any]) -> None:
    """POST *obj* to the collection at *path*; one that exists already is left as it is."""
    _must(lab, "POST", path, obj)


def _must(lab: str, method: str, path: str, body: Any = None, **kw: Any) -> Any:
    status, reply = request(lab, method, path, body, **kw)
    if status >= 400 and not (method == "POST" and status == 409):
        message = reply.get("message") if isinstance(reply, dict) else reply
        raise ControlPlaneError(f"{method} {path}: HTTP {status}: {message}")
    return reply


def _set_up_rbac(lab: str) -> None:
    """What every node agent may read: pods, namespaces, nodes, Services and EndpointSlices,
    cluster wide (as the chart's agent ClusterRole); and AuthorizationPolicies, whose status
    it writes."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    _must(
        lab,
        "POST",
        f"{rbac}/clusterroles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": AGENT_ROLE},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "namespaces", "nodes", "services"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["smesh.io"],
                    "resources": ["authorizationpolicies"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["smesh.io"],
                    "resources": ["authorizationpolicies/status"],
                    "verbs": ["patch"],
                },
            ],
        },
    )
    _must(
        lab,
        "POST",
        f"{rbac}/clusterrolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": AGENT_ROLE},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": AGENT_ROLE,
            },
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": AGENT_GROUP}
            ],
        },
    )


def _node_ready(node: dict[str, Any]) -> bool:
    status = node.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    taints = (node.get("spec") or {}).get("taints") or []
    return ready and not any(t.get("key") == NOT_READY_TAINT for t in taints)


def wait_nodes_ready(lab: state.LabState, topo: Topology, timeout: float = 90.0) -> None:
    """Until every kubelet has registered its Node, Ready and schedulable; then label roles.

    The role label is the admin's to set: NodeRestriction forbids a kubelet to give itself
    ``node-role.kubernetes.io/*``.
    """
    deadline = time.monotonic() + timeout
    pending = {node.name for node in topo.nodes}
    labelled: set[str] = set()
    while True:
        for name in sorted(pending):
            process = lab.kubelets.get(name)
            if process is not None and not process.alive():
                log = kubepaths.kubelet_log(topo.name, name)
                raise ControlPlaneError(f"the kubelet of {name} exited; see {log}")
            status, node = request(topo.name, "GET", f"/api/v1/nodes/{name}")
            if status != 200:
                continue
            if name not in labelled:
                _must(
                    topo.name,
                    "PATCH",
                    f"/api/v1/nodes/{name}",
                    {"metadata": {"labels": {"node-role.kubernetes.io/worker": ""}}},
                    content_type="application/merge-patch+json",
                )
                labelled.add(name)
            if _node_ready(node):
                pending.discard(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"nodes not Ready within {timeout:.0f} s: {', '.join(sorted(pending))} "
                f"(see the kubelet logs under {kubepaths.node_dir(topo.name, '')})"
            )
        time.sleep(0.5)
    # Pods of the default namespace need its ServiceAccount, made by the controller manager.
    while request(topo.name, "GET", "/api/v1/namespaces/default/serviceaccounts/default")[0] != 200:
        if time.monotonic() > deadline:
            raise ControlPlaneError("the controller manager made no default ServiceAccount")
        time.sleep(0.5)


def list_pods(lab: str) -> list[dict[str, Any]]:
    """Every pod of the cluster, as the API server has it."""
    status, reply = request(lab, "GET", "/api/v1/pods")
    if status != 200 or not isinstance(reply, dict):
        raise ControlPlaneError(f"listing pods: HTTP {status}: {reply!r:.200}")
    items: list[dict[str, Any]] = reply.get("items") or []
    return items
