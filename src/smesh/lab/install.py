"""Install smesh into a Kubernetes lab from its Helm chart: `lab up --kubernetes` (the default).

As a cluster admin would: the chart rendered by ``helm template`` (with the lab's values
below) and applied with ``kubectl``, the CA Secret made by ``smesh ca init --kubeconfig``;
both run inside ``NAME.control`` with the admin kubeconfig, like ``lab kubectl``. The lab
kubelets then run the agent DaemonSet's and the controller Deployment's pods as any pods,
the checkout's ``smesh`` standing in for the image.

What differs between lab nodes, which share one machine, comes in through the chart's
``agent.extraArgs`` (``$(NODE_NAME)`` is expanded by the kubelet): the node's cgroup root
(the lab kubelet's ``--cgroup-root``, ``/smesh-lab-NAME/node-k``) and a BPF pin directory of
the node's own under the lab's (so ``lab down`` removes the pins with the rest). The
node-local host paths (CNI directories, ``/run/smesh``, ``/var/lib/smesh``) are each node's
own through the kubelet's node roots (:mod:`smesh.lab.kubepaths`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from smesh.lab import cluster, kubepaths, state
from smesh.lab.controlplane import DEFAULT_BIN_DIR, ControlPlaneError
from smesh.lab.topology import Topology
from smesh.linux import cgroups, netns

REPO = Path(__file__).resolve().parents[3]
HELM = REPO / "build" / "helm" / "bin" / "helm"
CHART = REPO / "deploy" / "helm" / "smesh"
NAMESPACE = "smesh-system"
#: The agent DaemonSet's pods are named after it (``smesh-agent-xxxxx``).
AGENT_POD_PREFIX = "smesh-agent-"
#: From ``kubectl apply`` to every agent Ready and the controller available: pods start
#: one after another on two shared cores (the agents load BPF, the controller signs).
INSTALL_TIMEOUT = 180.0


class InstallFailed(ControlPlaneError):
    """smesh could not be installed into the lab from the chart."""


def lab_values(topo: Topology) -> dict[str, Any]:
    """The chart values of a lab: per-node settings through the agent's arguments."""
    node_settings = {
        "kubernetes.cgroupDriver": "cgroupfs",
        "kubernetes.cgroupRoot": f"/{topo.cgroup}/$(NODE_NAME)",
        "capture.pinDir": f"{state.bpf_pin_dir(topo.name)}/$(NODE_NAME)",
        "timeouts.drain": "5s",  # lab down should not wait long for open connections
    }
    extra: list[str] = []
    for key, value in node_settings.items():
        extra += ["--set", f"{key}={value}"]
    return {"agent": {"extraArgs": extra}}


def manifest_path(lab: str) -> Path:
    return kubepaths.kube_dir(lab) / "smesh.yaml"


def require_helm() -> None:
    """Refuse a chart install before the lab is built, rather than after 10 s of it."""
    if not HELM.is_file():
        raise InstallFailed(
            f"{HELM} is not built: run `make helm` (or `lab up --kubernetes --install "
            "processes` for agents as lab processes, without the chart)"
        )


def render(topo: Topology, values: Sequence[str] = ()) -> Path:
    """``helm template`` of the chart with the lab's values (and ``--set`` *values*)."""
    require_helm()
    values_file = kubepaths.kube_dir(topo.name) / "smesh-values.yaml"
    values_file.write_text(yaml.safe_dump(lab_values(topo), sort_keys=False))
    argv = [str(HELM), "template", "smesh", str(CHART), "--namespace", NAMESPACE]
    argv += ["--include-crds", "--values", str(values_file)]
    for value in values:
        argv += ["--set", value]
    done = subprocess.run(argv, capture_output=True, check=False, timeout=60)
    if done.returncode != 0:
        raise InstallFailed(f"helm template failed: {done.stderr.decode(errors='replace')}")
    path = manifest_path(topo.name)
    path.write_bytes(done.stdout)
    return path


def run_in_control(topo: Topology, cgroup_root: Path, argv: Sequence[str]) -> str:
    """Run *argv* in ``NAME.control`` (and the lab's control cgroup) as the cluster admin."""
    cgroup = cgroup_root / topo.cgroup / "control"

    def place() -> None:
        cgroups.join(cgroup, os.getpid())
        netns.enter(topo.control_netns)

    env = {**os.environ, "KUBECONFIG": str(kubepaths.admin_kubeconfig(topo.name))}
    done = subprocess.run(
        list(argv),
        capture_output=True,
        env=env,
        preexec_fn=place,
        check=False,
        timeout=120,
    )
    output = (done.stdout + done.stderr).decode(errors="replace").strip()
    if done.returncode != 0:
        raise InstallFailed(f"`{' '.join(argv[:4])} ...` failed: {output}")
    return output


def install(
    topo: Topology,
    cgroup_root: Path,
    timeout: float = INSTALL_TIMEOUT,
    values: Sequence[str] = (),
) -> None:
    """Apply the rendered chart, create the CA Secret, wait until smesh runs on every node."""
    manifest = render(topo, values)
    kubectl = str(DEFAULT_BIN_DIR / "kubectl")
    run_in_control(topo, cgroup_root, [kubectl, "apply", "-f", str(manifest)])
    admin = str(kubepaths.admin_kubeconfig(topo.name))
    run_in_control(
        topo, cgroup_root, [sys.executable, "-m", "smesh", "ca", "init", "--kubeconfig", admin]
    )
    wait_installed(topo, timeout)


def _get(lab: str, path: str) -> dict[str, Any]:
    status, reply = cluster.request(lab, "GET", path)
    return reply if status == 200 and isinstance(reply, dict) else {}


def installed(topo: Topology) -> bool:
    """Every node's agent pod Ready and the controller Deployment fully available."""
    apps = f"/apis/apps/v1/namespaces/{NAMESPACE}"
    agents = _get(topo.name, f"{apps}/daemonsets/smesh-agent").get("status") or {}
    deployment = _get(topo.name, f"{apps}/deployments/smesh-controller")
    wanted = (deployment.get("spec") or {}).get("replicas", 1)
    available = (deployment.get("status") or {}).get("availableReplicas") or 0
    return agents.get("numberReady") == len(topo.nodes) and available >= wanted


def pod_summary(lab: str) -> str:
    """One line per smesh pod: node, phase, and why a container is not running."""
    lines = []
    for pod in _get(lab, f"/api/v1/namespaces/{NAMESPACE}/pods").get("items") or []:
        meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        why = []
        for entry in [
            *(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or []),
        ]:
            for kind, detail in (entry.get("state") or {}).items():
                if kind != "running":
                    text = detail.get("message") or detail.get("reason") or kind
                    why.append(f"{entry['name']}: {text}"[:300])
            last = (entry.get("lastState") or {}).get("terminated") or {}
            if last.get("message") and entry.get("name") not in {"install-cni"}:
                why.append(f"{entry['name']} last ended: {last['message'][-600:]}")
        lines.append(
            f"{meta['name']} on {spec.get('nodeName') or '-'}: {status.get('phase')}"
            + (f" ({'; '.join(why)})" if why else "")
        )
    return "\n".join(lines) or "no pods in smesh-system"


def wait_installed(topo: Topology, timeout: float = INSTALL_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not installed(topo):
        if time.monotonic() > deadline:
            raise InstallFailed(
                f"smesh was not running within {timeout:.0f} s of its install:\n"
                f"{pod_summary(topo.name)}\n(container logs: <lab state>/nodes/node-k/pods/)"
            )
        time.sleep(1.0)
