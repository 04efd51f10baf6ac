"""Run one node agent per lab node, the way a DaemonSet would.

Each agent runs in its node's network namespace and in the node's ``agent`` cgroup, so
capture (attached to pod cgroups) never sees the agent's own sockets. Agents outlive the
``lab up`` command; ``lab down`` stops them (SIGTERM, then SIGKILL through the cgroup) and
then removes capture with the rest of the lab. A stopped agent leaves capture in place,
so ``restart-agent`` never lets a pod's connects out in plain text.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from smesh.agent import client
from smesh.lab import state
from smesh.lab.errors import LabError
from smesh.lab.topology import Node, Topology
from smesh.linux import cgroups, netns

#: The agents' admin listeners (docs/agent.md, "Admin endpoints"): /metrics, /healthz and
#: /ready on the scrape port, on the node's addresses; /debug/* on the debug port, on the
#: node's loopback only (the CLI asks it from inside the node's namespace).
SCRAPE_PORT = 15020
DEBUG_PORT = 15000
#: The agents' nice value: a CPU weight about three times a default process's (1024 → 3121).
#: A CNI ADD waits for its agent, and a burst of pod starts (the kubelet's sandboxes, a
#: Python CNI plugin per pod) keeps the CPUs busy just then; on a real node the
#: DaemonSet's CPU request gives its cgroup that weight. Not the cgroup's cpu.weight here:
#: a host may bind the cpu controller to cgroup v1 (this lab's hierarchy is v2 only).
#: The agent's session gets it too (set_autogroup_nice), or it would not count.
AGENT_NICE = -5
AUTOGROUP = Path("/proc/self/autogroup")


def admin_port(path: str) -> int:
    """The lab agent's port that serves *path* (``/debug/*`` the debug one)."""
    return DEBUG_PORT if path.startswith("/debug/") else SCRAPE_PORT


def node_dir(lab: str, node: str) -> Path:
    return state.directory(lab) / node


def kubernetes_section(topo: Topology, node: Node) -> dict[str, Any]:
    """The agent's ``kubernetes`` workload source for a node of a Kubernetes lab."""
    from smesh.lab import kubepaths  # noqa: PLC0415

    return {
        "kubeconfig": str(kubepaths.agent_kubeconfig(topo.name, node.name)),
        "cniSocket": str(kubepaths.cni_socket(topo.name, node.name)),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{node.cgroup}",
        "sandboxDir": str(kubepaths.node_dir(topo.name, node.name) / "sandboxes"),
    }


def meshed_through_api(topo: Topology) -> bool:
    """Whether *topo*'s agents watch the API and the kubelets chain smesh-cni to them."""
    return topo.kubernetes and topo.mesh


def config_for(topo: Topology, node: Node, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The agent configuration file of one lab node."""
    source: dict[str, Any] = {"workloads": str(state.workloads_dir(topo.name))}
    if meshed_through_api(topo):
        source = {"kubernetes": kubernetes_section(topo, node)}
    config: dict[str, Any] = {
        "node": node.name,
        **source,
        "capture": {
            "mode": "auto",
            "meshCidrs": ["198.18.0.0/16", "fd00:198:18::/48"],
            "pinDir": str(state.bpf_pin_dir(topo.name) / node.name),
        },
        "admin": {
            "scrape": {"address": "0.0.0.0", "port": SCRAPE_PORT},
            "debug": {"address": "127.0.0.1", "port": DEBUG_PORT},
        },
        "timeouts": {"drain": "5s"},  # lab down should not wait long for open connections
        # restart-agent and upgrade-agent hand the node over through it (docs/agent.md)
        "handoverSocket": str(node_dir(topo.name, node.name) / "handover.sock"),
        "identity": {
            "trustDomain": "cluster.local",
            "signerSocket": str(state.directory(topo.name) / "ca" / "signer.sock"),
            "nodeCredentialDir": str(node_dir(topo.name, node.name) / "credential"),
            # the pods' certificates, for a restart while the signer is away (0700)
            "credentialCache": str(node_dir(topo.name, node.name) / "credential-cache"),
        },
    }
    for key, value in (extra or {}).items():
        section = config.setdefault(key, {})
        if isinstance(section, dict) and isinstance(value, dict):
            section.update(value)
        else:
            config[key] = value
    return config


def set_autogroup_nice(nice: int, path: Path = AUTOGROUP) -> bool:
    """Give this process's autogroup *nice*; False where the kernel has no autogroups.

    A new session is a new autogroup (sched(7)) while the cpu controller is not in a
    cgroup of the process's own, as on a host that binds it to cgroup v1: the scheduler
    then shares the CPUs between autogroups first, and a process's own nice value only
    orders it within its group. A daemon started in a session of its own at nice -5 would
    weigh as much as any other session; the group's nice is what gives it the weight.
    Measured (docs/benchmarks.md, "The p99 on fresh agents"): the agents' wait in the run
    queue per round trip fell from 25 to 110 µs to 3 to 10 µs.
    """
    try:
        path.write_text(f"{nice}\n")
    except OSError:  # no autogroups (CONFIG_SCHED_AUTOGROUP off), or not allowed
        return False
    return True


def set_weight(nice: int) -> bool:
    """Put this process at *nice* and its session's autogroup at *nice* too; False where
    the kernel has no autogroups.

    Call it in a session of its own (a new autogroup), before exec: every thread and child
    the program starts inherits both. The one place where the lab's agents and the bench's
    proxies (smesh.bench.variants) take their CPU weight, so the bench compares them on
    equal terms.
    """
    os.setpriority(os.PRIO_PROCESS, 0, nice)
    return set_autogroup_nice(nice)


def spawn(
    argv: list[str], cgroup: Path, netns_name: str | None, log_path: Path, nice: int = 0
) -> state.Process:
    """Start a lab daemon detached from this process, in *cgroup* (and *netns_name*), at
    *nice* (inherited by every thread it starts; its session's autogroup too)."""
    cgroups.create(cgroup)

    def place() -> None:  # in the child, before exec: the cgroup first, then the namespace
        cgroups.join(cgroup, os.getpid())
        if netns_name is not None:
            netns.enter(netns_name)
        if nice:
            set_weight(nice)

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=place,  # noqa: PLW1509 - lab up is single-threaded at this point
            start_new_session=True,
        )
    start_time = state.start_time_of(proc.pid)
    if start_time is None:
        what = f"smesh {argv[3]}" if argv[1:3] == ["-m", "smesh"] else " ".join(argv[:3])
        raise LabError(f"`{what}` exited at once; see {log_path}")
    return state.Process(pid=proc.pid, start_time=start_time)


def start(
    topo: Topology,
    node: Node,
    cgroup_root: Path,
    extra: dict[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> state.Process:
    """Start *node*'s agent; its output goes to NODE/agent.log in the lab's state."""
    directory = node_dir(topo.name, node.name)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config_for(topo, node, extra), sort_keys=False))
    argv = [sys.executable, "-m", "smesh", "agent", "--config", str(config_path)]
    for item in overrides:
        argv += ["--set", item]
    log = directory / "agent.log"
    return spawn(argv, cgroup_root / node.agent_cgroup, node.netns, log, AGENT_NICE)


def restart(
    topo: Topology,
    node: Node,
    cgroup_root: Path,
    config_path: Path,
    overrides: Sequence[str] = (),
) -> state.Process:
    """Start the agent again with the configuration it had."""
    argv = [sys.executable, "-m", "smesh", "agent", "--config", str(config_path)]
    for item in overrides:
        argv += ["--set", item]
    log = node_dir(topo.name, node.name) / "agent.log"
    return spawn(argv, cgroup_root / node.agent_cgroup, node.netns, log, AGENT_NICE)


def serving_pid(node: Node) -> int | None:
    """The pid of the agent answering the node's admin port (after a hand-over: the new)."""
    try:
        reply = client.get(
            "127.0.0.1", DEBUG_PORT, "/debug/workloads", netns=node.netns, timeout=1.0
        )
    except client.AdminUnreachable:
        return None
    try:
        pid = json.loads(reply.body).get("pid")
    except ValueError:
        return None
    return pid if isinstance(pid, int) else None


def wait_handed_over(
    topo: Topology, node: Node, process: state.Process, timeout: float = 30.0
) -> None:
    """Wait until *process* took the node over from the agent running before it, and is
    ready (the old one answers the admin ports until its hand-over)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.alive():
        if serving_pid(node) == process.pid:
            break
        time.sleep(0.05)
    wait_ready(topo, node, process, max(1.0, deadline - time.monotonic()))


def health(node: Node, process: state.Process | None) -> str:
    """``ready``, ``starting`` (alive, not ready yet), ``dead`` or ``none``."""
    if process is None:
        return "none"
    if not process.alive():
        return "dead"
    try:
        reply = client.get("127.0.0.1", SCRAPE_PORT, "/ready", netns=node.netns, timeout=1.0)
    except client.AdminUnreachable:
        return "starting"
    return "ready" if reply.status == 200 else "starting"


def pod_health(node: Node) -> str:
    """The health of a node's agent pod (a lab installed from the chart: the agent is the
    DaemonSet's pod, not a lab process): ``ready`` or ``starting``, by the pod's readiness
    probe (``/healthz``: capture attached, hand-off socket open). Not ``/ready``, which also
    waits for every pod's certificate, so it flips while new pods start."""
    try:
        reply = client.get("127.0.0.1", SCRAPE_PORT, "/healthz", netns=node.netns, timeout=2.0)
    except client.AdminUnreachable:
        return "starting"
    return "ready" if reply.status == 200 else "starting"


def wait_ready(topo: Topology, node: Node, process: state.Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = health(node, process)
        if status == "ready":
            return
        if status == "dead":
            break
        time.sleep(0.1)
    log = node_dir(topo.name, node.name) / "agent.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise LabError(
        f"the agent of {node.name} did not become ready within {timeout:.0f}s"
        + (f"; last log line: {tail[0]}" if tail else "")
        + f" (full log: {log})"
    )


def stop(
    process: state.Process, timeout: float = 10.0, sig: signal.Signals = signal.SIGTERM
) -> None:
    """SIGTERM (the agent drains and exits; capture stays pinned), then give up waiting.

    An agent that handed its node over ignores SIGTERM (it serves its connections until
    they end: docs/agent.md) and takes SIGINT as a stop within ``timeouts.drain``."""
    if not process.alive():
        return
    os.kill(process.pid, sig)
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
