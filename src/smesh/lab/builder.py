"""Turn a :class:`~smesh.lab.topology.Topology` into namespaces, veths, bridges and cgroups.

Every interface is created directly inside its namespace (``ip -n NS link add … peer …
netns OTHER``), so nothing is ever added to the machine's own network namespace, even for
a moment. The node namespaces route between pod CIDRs; nothing routes out of the lab.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from smesh.lab.topology import CONTROL_IP4, CONTROL_IP6, FABRIC4, FABRIC6, Node, Pod, Topology
from smesh.linux import cgroups, iproute, netns
from smesh.linux.errors import CommandFailed

_NO_DAD = ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad")


def fabric_commands(topo: Topology) -> list[str]:
    cmds = ["link set lo up", "link add fab0 type bridge", "link set fab0 up"]
    for node in topo.nodes:
        port = f"n{node.index}"
        cmds += [
            f"link add {port} type veth peer name eth0 netns {node.netns}",
            f"link set {port} master fab0",
            f"link set {port} up",
        ]
    if topo.kubernetes:
        cmds += [
            f"link add ctl type veth peer name eth0 netns {topo.control_netns}",
            "link set ctl master fab0",
            "link set ctl up",
        ]
    return cmds


def control_commands() -> list[str]:
    """The Kubernetes control plane's namespace: one leg on the fabric, nothing else."""
    return [
        "link set lo up",
        f"addr add {CONTROL_IP4}/{FABRIC4.prefixlen} dev eth0",
        f"addr add {CONTROL_IP6}/{FABRIC6.prefixlen} dev eth0 nodad",
        "link set eth0 up",
    ]


def node_commands(topo: Topology, node: Node) -> list[str]:
    cmds = [
        "link set lo up",
        f"addr add {node.ip4}/{FABRIC4.prefixlen} dev eth0",
        f"addr add {node.ip6}/{FABRIC6.prefixlen} dev eth0 nodad",
        "link set eth0 up",
        f"link add br0 address {node.bridge_mac} type bridge",  # fixed: see Node.bridge_mac
        f"addr add {node.gateway4}/{node.pod_cidr4.prefixlen} dev br0",
        f"addr add {node.gateway6}/{node.pod_cidr6.prefixlen} dev br0 nodad",
        "link set br0 up",
    ]
    for other in topo.nodes:
        if other is not node:
            cmds.append(f"route add {other.pod_cidr4} via {other.ip4}")
            cmds.append(f"route add {other.pod_cidr6} via {other.ip6}")
    if topo.kubernetes:
        # What a node's default route does for its own processes (hostNetwork pods): a
        # ClusterIP must route somewhere before kube-proxy's output NAT can rewrite it.
        cmds.append(f"route add {topo.service_cidr} dev eth0")
    for pod in topo.pods_on(node.name):
        cmds += [
            f"link add {pod.host_veth} type veth peer name eth0 netns {pod.netns}",
            f"link set {pod.host_veth} master br0",
            f"link set {pod.host_veth} up",
        ]
    return cmds


def pod_commands(topo: Topology, pod: Pod) -> list[str]:
    node = topo.node(pod.node)
    return [
        "link set lo up",
        f"addr add {pod.ip4}/{node.pod_cidr4.prefixlen} dev eth0",
        f"addr add {pod.ip6}/{node.pod_cidr6.prefixlen} dev eth0 nodad",
        "link set eth0 up",
        f"route add default via {node.gateway4}",
        f"route add default via {node.gateway6}",
    ]


def build(topo: Topology, cgroup_root: Path) -> None:
    """Create every kernel object of *topo*. On failure the caller tears the lab down."""
    iproute.batch(f"netns add {name}" for name in topo.netns_names)
    for name in topo.netns_names:
        for key in _NO_DAD:
            netns.write_sysctl(name, key, "0")
    for node in topo.nodes:
        netns.write_sysctl(node.netns, "net.ipv4.ip_forward", "1")
        netns.write_sysctl(node.netns, "net.ipv6.conf.all.forwarding", "1")
    iproute.batch(fabric_commands(topo), netns=topo.fabric_netns)
    for node in topo.nodes:
        iproute.batch(node_commands(topo, node), netns=node.netns)
    for pod in topo.pods:
        iproute.batch(pod_commands(topo, pod), netns=pod.netns)
    if topo.kubernetes:
        iproute.batch(control_commands(), netns=topo.control_netns)
    for node in topo.nodes:
        cgroups.create(cgroup_root / node.host_cgroup)
    for pod in topo.pods:
        cgroups.create(cgroup_root / pod.cgroup)


def teardown(name: str, cgroup_root: Path | None, pin_dir: Path) -> None:
    """Remove everything lab *name* made, whatever state a crash left it in. Idempotent.

    Works from names alone (not the saved plan), so a lab half-built by a killed ``up``
    or half-destroyed by a killed ``down`` is still found and removed.
    """
    lab_cgroup = cgroup_root / f"smesh-lab-{name}" if cgroup_root else None
    if lab_cgroup is not None:
        cgroups.kill_all(lab_cgroup)  # agents and apps first: they hold sockets and links
    prefix = f"{name}."
    doomed = [ns for ns in netns.list_names() if ns.startswith(prefix)]
    for ns in doomed:
        try:
            iproute.ip("netns", "del", ns)
        except CommandFailed:
            if netns.exists(ns):
                raise
    if pin_dir.exists():
        shutil.rmtree(pin_dir)  # unlinking a pinned BPF link detaches it
        with contextlib.suppress(OSError):  # other labs may still pin there
            pin_dir.parent.rmdir()
    if lab_cgroup is not None:
        cgroups.remove_tree(lab_cgroup, kill=True)
