"""What a running lab remembers between commands: its plan's inputs and what it started.

Kept under /run (tmpfs), like the namespaces themselves, so a reboot forgets both together.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smesh.lab import topology
from smesh.lab.errors import LabError

STATE_ROOT = Path(os.environ.get("SMESH_RUN_DIR", "/run/smesh")) / "labs"
BPF_PIN_ROOT = Path("/sys/fs/bpf/smesh")


@dataclass
class Process:
    """A long-running process the lab started (an agent), identified beyond its pid."""

    pid: int
    start_time: int  # field 22 of /proc/PID/stat: tells a reused pid apart

    def alive(self) -> bool:
        return start_time_of(self.pid) == self.start_time


@dataclass
class LabState:
    name: str
    nodes: int
    pods_per_node: int
    mesh: bool
    identities: dict[str, list[str]] = field(default_factory=dict)
    phase: str = "building"  # building → up
    agents: dict[str, Process] = field(default_factory=dict)
    signer: Process | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    kubernetes: bool = False
    #: ``--kubernetes``: etcd, kube-apiserver, ... by component name, and the kubelets by node.
    control_plane: dict[str, Process] = field(default_factory=dict)
    kubelets: dict[str, Process] = field(default_factory=dict)
    #: Agents that handed their node over and serve their open connections until these
    #: end (restart-agent, upgrade-agent): by node; `lab down` stops them too.
    lingering: dict[str, list[Process]] = field(default_factory=dict)
    #: ``--kubernetes``: each node's kube-proxy, by node.
    proxies: dict[str, Process] = field(default_factory=dict)
    #: When ``lab up`` began (unix time), for ``lab list``'s age; 0: not recorded.
    created: float = field(default_factory=time.time)

    def topology(self) -> topology.Topology:
        return topology.plan(
            self.name,
            self.nodes,
            self.pods_per_node,
            self.mesh,
            {pod: (ns_sa[0], ns_sa[1]) for pod, ns_sa in self.identities.items()},
            kubernetes=self.kubernetes,
            service_range=self.settings.get("service_cidr"),
        )


def directory(name: str) -> Path:
    return STATE_ROOT / name


def workloads_dir(name: str) -> Path:
    """Where the lab publishes one file per pod: the agents' workload source."""
    return directory(name) / "workloads"


def policy_path(name: str) -> Path:
    """The lab's authorization policy, which every agent's ``policy:`` names: a link to
    ``lab up --policy FILE``, an empty policy without it; ``smesh lab policy`` replaces it."""
    return directory(name) / "policy.yaml"


def bpf_pin_dir(name: str) -> Path:
    return BPF_PIN_ROOT / name


def save(state: LabState) -> None:
    path = directory(state.name)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "state.json.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    tmp.replace(path / "state.json")


def load(name: str) -> LabState | None:
    try:
        data = json.loads((directory(name) / "state.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(
            f"lab {name!r} has a damaged state file ({exc}); run `smesh lab down --lab {name}`"
        ) from exc
    for key in ("agents", "control_plane", "kubelets", "proxies"):
        data[key] = {name: Process(**proc) for name, proc in data.get(key, {}).items()}
    data["lingering"] = {
        name: [Process(**proc) for proc in procs]
        for name, procs in data.get("lingering", {}).items()
    }
    data.setdefault("created", 0.0)  # saved before smesh recorded it: the age is unknown
    if data.get("signer"):
        data["signer"] = Process(**data["signer"])
    return LabState(**data)


def start_time_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    if fields[0] in {"Z", "X"}:  # exited, waiting to be reaped: not running
        return None
    return int(fields[19])
