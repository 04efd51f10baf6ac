"""Where a Kubernetes lab (``smesh lab up --kubernetes``) keeps its files.

One place for every path, because four programs read them: ``lab up`` writes them, the
kubelets and the agents use them, ``lab kubectl``/``exec``/``status`` look things up in them.
Everything lives under the lab's state directory, so ``lab down`` removes it with the rest::

    <state>/kubernetes/pki/            CA, serving and client certificates, service-account key
    <state>/kubernetes/admin.kubeconfig
    <state>/kubernetes/{controller-manager,scheduler}.kubeconfig
    <state>/kubernetes/etcd/           etcd's data
    <state>/kubernetes/logs/           one log per control-plane process
    <state>/kubernetes/cni/bin/        CNI_PATH: links to the CNI plugins
    <state>/nodes/node-k/kubelet.kubeconfig, agent.kubeconfig, kubelet.log
    <state>/nodes/node-k/cni.sock      the node agent's CNI hand-off socket (meshed labs)
    <state>/nodes/node-k/cni/10-smesh-lab.conflist, cni/ipam/ (host-local's leases)
    <state>/nodes/node-k/pods/<uid>/sandbox.json, <container>.log
    <state>/nodes/node-k/root/{etc/cni/net.d,opt/cni/bin,run/smesh,var/lib/smesh}
                                       the node's own copies of the node-local host paths

Lab nodes share the machine's filesystem, but a DaemonSet names the same hostPath on every
node: the kubelet of node-k maps a hostPath under one of :data:`NODE_LOCAL_PATHS` into that
node's root (:func:`host_path`), so two nodes' agents do not share a CNI configuration, a
hand-off socket or sandbox records. Everything else (``/sys/fs/bpf``, ``/sys/fs/cgroup``,
``/run/netns``, ``/proc``) is the machine's, as it must be: one kernel serves every node.
"""

from __future__ import annotations

from pathlib import Path

from smesh.lab import state
from smesh.lab.topology import CONTROL_IP4

API_PORT = 6443
API_SERVER = f"https://{CONTROL_IP4}:{API_PORT}"
CONFLIST_NAME = "10-smesh-lab.conflist"


def kube_dir(lab: str) -> Path:
    return state.directory(lab) / "kubernetes"


def pki_dir(lab: str) -> Path:
    return kube_dir(lab) / "pki"


def admin_kubeconfig(lab: str) -> Path:
    return kube_dir(lab) / "admin.kubeconfig"


def component_kubeconfig(lab: str, component: str) -> Path:
    return kube_dir(lab) / f"{component}.kubeconfig"


def etcd_dir(lab: str) -> Path:
    return kube_dir(lab) / "etcd"


def log_dir(lab: str) -> Path:
    return kube_dir(lab) / "logs"


def cni_bin_dir(lab: str) -> Path:
    return kube_dir(lab) / "cni" / "bin"


def node_dir(lab: str, node: str) -> Path:
    return state.directory(lab) / "nodes" / node


def signer_kubeconfig(lab: str) -> Path:
    return kube_dir(lab) / "smesh-signer.kubeconfig"


def kubelet_kubeconfig(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "kubelet.kubeconfig"


def agent_kubeconfig(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "agent.kubeconfig"


def kubelet_log(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "kubelet.log"


def cni_socket(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "cni.sock"


def conflist(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "cni" / CONFLIST_NAME


def ipam_dir(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "cni" / "ipam"


def pods_dir(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "pods"


#: Host paths that are a node's own: the runtime's CNI directories and smesh's node state.
NODE_LOCAL_PATHS = ("/etc/cni/net.d", "/opt/cni/bin", "/run/smesh", "/var/lib/smesh")


def node_root(lab: str, node: str) -> Path:
    return node_dir(lab, node) / "root"


def host_path(root: Path, path: str) -> str:
    """*path* as node *root* sees it: under :data:`NODE_LOCAL_PATHS` it is the node's own
    copy, anything else is the machine's. The labs' own state (``/run/smesh/labs``, where
    the lab writes e.g. host-local's lease directory into the network) is the machine's."""
    labs = str(state.STATE_ROOT)
    if path == labs or path.startswith(labs + "/"):
        return path
    for local in NODE_LOCAL_PATHS:
        if path == local or path.startswith(local + "/"):
            return str(root) + path
    return path


def node_cni_conf_dir(lab: str, node: str) -> Path:
    return node_root(lab, node) / "etc/cni/net.d"


def node_cni_bin_dir(lab: str, node: str) -> Path:
    return node_root(lab, node) / "opt/cni/bin"
