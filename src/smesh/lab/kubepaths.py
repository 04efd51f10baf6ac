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
