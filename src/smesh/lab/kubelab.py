"""The Kubernetes side of ``smesh lab``: bring-up of nodes, and finding Kubernetes pods.

``lab up --kubernetes`` = the lab's namespaces (no static pods) + the control plane
(:mod:`smesh.lab.cluster`) + per node a CNI network list and a kubelet
(:mod:`smesh.lab.kubelet`). Pods then come from the API server. ``lab exec NS/POD`` and
``lab status`` find them through the kubelets' sandbox records and the API.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smesh.lab import agents, cluster, kubepaths, services, state
from smesh.lab import kubelet_cni as cni
from smesh.lab.controlplane import ControlPlaneError
from smesh.lab.errors import UnknownMember
from smesh.lab.kubelet import Sandbox, load_sandboxes
from smesh.lab.topology import Node, Topology


def smesh_cni_binary() -> Path:
    """The venv's ``smesh-cni`` (installed by ``pip install``, from pyproject's scripts)."""
    return Path(sys.prefix) / "bin" / "smesh-cni"


def write_networks(topo: Topology, *, chart: bool = False) -> None:
    """CNI_PATH and each node's network list (smesh-cni chained in when the mesh is on).

    With *chart* each node's own CNI directories (its node root) get the plain network
    (bridge + host-local) and Debian's plugins: the agent DaemonSet's CNI installer chains
    smesh-cni into them, as on a real node."""
    if chart:
        for node in topo.nodes:
            cni.link_plugins(kubepaths.node_cni_bin_dir(topo.name, node.name), None)
            network = cni.conflist(node, kubepaths.ipam_dir(topo.name, node.name), None)
            path = kubepaths.node_cni_conf_dir(topo.name, node.name) / kubepaths.CONFLIST_NAME
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(network, indent=2))
        return
    meshed = agents.meshed_through_api(topo)
    cni.link_plugins(kubepaths.cni_bin_dir(topo.name), smesh_cni_binary() if meshed else None)
    for node in topo.nodes:
        socket = kubepaths.cni_socket(topo.name, node.name) if meshed else None
        network = cni.conflist(node, kubepaths.ipam_dir(topo.name, node.name), socket)
        path = kubepaths.conflist(topo.name, node.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(network, indent=2))


def start_control_plane(lab: state.LabState, topo: Topology, cgroup_root: Path) -> None:
    services.check_dns_binary()  # before anything starts: it is deployed once nodes are Ready
    cluster.start(lab, topo, cgroup_root)
    write_networks(topo, chart=installs_chart(lab))


def installs_chart(lab: state.LabState) -> bool:
    """Whether smesh is installed into the lab from the Helm chart (``--install chart``)."""
    return lab.settings.get("install") == "chart"


def start_kubelets(lab: state.LabState, topo: Topology, cgroup_root: Path) -> None:
    """One kubelet and one kube-proxy per node (node netns, node host cgroup); returns when
    every Node is Ready, with cluster DNS deployed (its pods start as the kubelets get them,
    as in a cluster that kubeadm has just made)."""
    for node in topo.nodes:
        lab.kubelets[node.name] = spawn_kubelet(topo, node, cgroup_root)
        state.save(lab)
        lab.proxies[node.name] = services.spawn_kube_proxy(topo, node, cgroup_root)
        state.save(lab)
    cluster.wait_nodes_ready(lab, topo)
    services.deploy_dns(topo.name)


def spawn_kubelet(topo: Topology, node: Node, cgroup_root: Path) -> state.Process:
    argv = [sys.executable, "-m", "smesh.lab.kubelet", "--lab", topo.name, "--node", node.name]
    log = kubepaths.kubelet_log(topo.name, node.name)
    return agents.spawn(argv, cgroup_root / node.host_cgroup, node.netns, log)


@dataclass(frozen=True)
class PodSandbox:
    """A Kubernetes pod on a lab node, as its kubelet made it."""

    node: str
    sandbox: Sandbox


def sandboxes(topo: Topology) -> list[PodSandbox]:
    found = []
    for node in topo.nodes:
        for sandbox in load_sandboxes(kubepaths.pods_dir(topo.name, node.name)).values():
            found.append(PodSandbox(node.name, sandbox))
    return found


def find_pod(topo: Topology, ref: str) -> PodSandbox:
    """The running sandbox of pod ``NAMESPACE/NAME`` (for ``lab exec``)."""
    namespace, _, name = ref.partition("/")
    live = [
        found
        for found in sandboxes(topo)
        if (found.sandbox.namespace, found.sandbox.name) == (namespace, name)
        and found.sandbox.ready
    ]
    if not live:
        running = sorted(
            f"{f.sandbox.namespace}/{f.sandbox.name}" for f in sandboxes(topo) if f.sandbox.ready
        )
        raise UnknownMember(
            f"lab {topo.name!r} runs no Kubernetes pod {ref!r} "
            f"(running: {', '.join(running) or 'none'})"
        )
    return live[0]


def mounts_prefix(sandbox: Sandbox) -> list[str]:
    """``nsenter`` into the mount namespace of *sandbox*'s first running container (what
    ``kubectl exec`` sees: its volumes, its resolv.conf); none running: nothing (the
    machine's view). Python 3.11 has no ``os.setns``, util-linux has."""
    for record in sandbox.containers.values():
        if record.pid and state.start_time_of(record.pid) == record.proc_start:
            return ["nsenter", f"--mount=/proc/{record.pid}/ns/mnt", "--"]
    return []


def pod_rows(topo: Topology) -> list[dict[str, Any]]:
    """Every pod of the API (namespace/name, node, IPs, phase), with its sandbox if local."""
    found = sandboxes(topo)
    local = {f.sandbox.uid: f.sandbox for f in found}
    try:
        listed = cluster.list_pods(topo.name)
    except ControlPlaneError:  # the API server is down: what the kubelets know, phase unknown
        listed = [
            {
                "metadata": {
                    "namespace": f.sandbox.namespace,
                    "name": f.sandbox.name,
                    "uid": f.sandbox.uid,
                },
                "spec": {"nodeName": f.node, "hostNetwork": f.sandbox.host_network},
                "status": {"phase": "Unknown", "podIPs": [{"ip": ip} for ip in f.sandbox.ips]},
            }
            for f in found
            if not f.sandbox.released
        ]
    rows = []
    for pod in listed:
        meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
        ips = [entry.get("ip", "") for entry in status.get("podIPs") or []]
        sandbox = local.get(meta.get("uid", ""))
        rows.append(
            {
                "namespace": meta.get("namespace", ""),
                "name": meta.get("name", ""),
                "node": spec.get("nodeName") or "",
                "ip": next((ip for ip in ips if ":" not in ip), ""),
                "ip6": next((ip for ip in ips if ":" in ip), ""),
                "phase": status.get("phase", ""),
                "host_network": bool(spec.get("hostNetwork")),
                "service_account": spec.get("serviceAccountName") or "default",
                "netns": sandbox.netns if sandbox and sandbox.ready else "",
                "cgroup": sandbox.cgroup if sandbox and sandbox.ready else "",
                "deleting": bool(meta.get("deletionTimestamp")),
            }
        )
    return sorted(rows, key=lambda r: (r["namespace"], r["name"]))
