"""The lab's control plane: a CA, node credentials and the signing service.

What a cluster's control plane provides to node agents (istiod's CA, a kubelet's client
certificate), made here from files and one process under the lab's cgroup.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from smesh.identity.ca import CertificateAuthority
from smesh.lab import agents, state
from smesh.lab.errors import LabError
from smesh.lab.topology import Topology

TRUST_DOMAIN = "cluster.local"


def ca_dir(lab: str) -> Path:
    return state.directory(lab) / "ca"


def signer_socket(lab: str) -> Path:
    return ca_dir(lab) / "signer.sock"


def credential_dir(lab: str, node: str) -> Path:
    return agents.node_dir(lab, node) / "credential"


def set_up_identity(topo: Topology) -> CertificateAuthority:
    """A fresh CA for the lab, and one node credential per node (the agents' bootstrap)."""
    ca = CertificateAuthority.init(ca_dir(topo.name), TRUST_DOMAIN)
    for node in topo.nodes:
        directory = credential_dir(topo.name, node.name)
        directory.mkdir(parents=True, exist_ok=True)
        ca.node_credential(node.name).write_to_path(directory / "cert.pem", directory / "key.pem")
        (directory / "bundle.pem").write_text(ca.bundle().pem())
    return ca


def start_signer(topo: Topology, cgroup_root: Path, timeout: float = 30.0) -> state.Process:
    socket_path = signer_socket(topo.name)
    argv = [
        sys.executable,
        "-m",
        "smesh",
        "ca",
        "serve",
        "--dir",
        str(ca_dir(topo.name)),
        "--socket",
        str(socket_path),
    ]
    where: str | None = None
    if topo.kubernetes:  # who runs where comes from the API server, reached in its netns
        from smesh.lab import kubepaths  # noqa: PLC0415

        argv += ["--kubeconfig", str(kubepaths.signer_kubeconfig(topo.name))]
        where = topo.control_netns
    else:
        argv += ["--workloads", str(state.workloads_dir(topo.name))]
    log_path = ca_dir(topo.name) / "signer.log"
    process = agents.spawn(argv, cgroup_root / topo.cgroup / "control", where, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if socket_path.exists():
            return process
        if not process.alive():
            break
        time.sleep(0.05)
    raise LabError(f"the lab's signing service did not start; see {log_path}")
