"""Capture for the pods of a lab, before (and beside) any agent: what `smesh capture` runs.

Per node, the pods' cgroups get the capture programs and the node's agent cgroup
(``.../node-K/agent``) answers SO_ORIGINAL_DST, exactly as the agent will set it up.
Everything is pinned under the lab's pin directory, so the command can exit and `smesh
lab down` (which removes that directory) or `smesh capture detach` undoes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smesh.capture import nftables, pins
from smesh.capture.backends import node_capture
from smesh.capture.config import CaptureConfig
from smesh.capture.errors import CaptureError
from smesh.capture.node import Mode, ModeChoice, select_mode
from smesh.lab import api, state, topology
from smesh.lab.topology import Node, Topology
from smesh.linux import cgroups, privileges


def pin_dir(lab: str, node: str) -> Path:
    return state.bpf_pin_dir(lab) / node


def lab_config(excluded_ports: tuple[int, ...] = ()) -> CaptureConfig:
    """The lab's mesh: its pod CIDRs, v4 and v6."""
    return CaptureConfig.build(
        mesh_cidrs=(topology.POD_CIDR4, topology.POD_CIDR6), excluded_ports=excluded_ports
    )


def _nodes(topo: Topology, node: str | None) -> list[Node]:
    return [topo.node(node)] if node else list(topo.nodes)


def current_mode(topo: Topology, node: Node) -> Mode | None:
    """How the node's pods are captured right now, judged from the kernel's state."""
    if pins.Layout(pin_dir(topo.name, node.name)).exists():
        return "ebpf"
    if any(nftables.has_table(pod.netns) for pod in topo.pods_on(node.name)):
        return "nftables"
    return None


@dataclass
class AttachResult:
    node: str
    choice: ModeChoice
    pods: list[str] = field(default_factory=list)


def attach(
    lab: str, node: str | None, mode: str, config: CaptureConfig | None = None
) -> list[AttachResult]:
    privileges.require("smesh capture attach")
    _state, topo = api.load(lab)
    config = config or lab_config()
    root = cgroups.v2_root()
    targets = _nodes(topo, node)
    choice = select_mode(mode)
    results = []
    for target in targets:
        existing = current_mode(topo, target)
        if existing is not None and existing != choice.mode:
            raise CaptureError(
                f"{target.name} of lab {lab!r} is captured with {existing} already; run "
                f"`smesh capture detach --lab {lab} --node {target.name}` first"
            )
        result = AttachResult(target.name, choice)
        agent_cgroup = cgroups.create(root / target.agent_cgroup)
        with node_capture(choice.mode, pin_dir(lab, target.name), config) as capture:
            capture.attach_proxy(agent_cgroup)
            for pod in topo.pods_on(target.name):
                capture.add_pod(
                    f"{pod.namespace}/{pod.name}",
                    pod.name,
                    root / pod.cgroup,
                    pod.netns,
                    ipv4=pod.ip4,
                    ipv6=pod.ip6,
                )
                result.pods.append(pod.name)
        results.append(result)
    return results


def detach(lab: str, node: str | None) -> dict[str, str]:
    """Remove capture from the lab's nodes; says per node what was removed."""
    privileges.require("smesh capture detach")
    _state, topo = api.load(lab)
    done: dict[str, str] = {}
    for target in _nodes(topo, node):
        directory = pin_dir(lab, target.name)
        if directory.exists():
            done[target.name] = f"ebpf: {pins.detach(directory)} links detached"
        tables = sum(nftables.remove_table(pod.netns) for pod in topo.pods_on(target.name))
        if tables:
            done[target.name] = f"nftables: {tables} tables removed"
        done.setdefault(target.name, "was not captured")
    parent = state.bpf_pin_dir(lab)
    if parent.exists() and not any(parent.iterdir()):
        parent.rmdir()
    return done


def status(lab: str) -> dict[str, Any]:
    """Mode, pods, counters and occupancy of every node (the JSON of `capture status`)."""
    _state, topo = api.load(lab)
    nodes = []
    for target in topo.nodes:
        mode = current_mode(topo, target)
        entry: dict[str, Any] = {"name": target.name, "mode": mode or "off", "pods": []}
        if mode == "ebpf":
            with pins.PinnedCapture(pin_dir(lab, target.name)) as pinned:
                occupancy = pinned.occupancy()
                entry["pods"] = [
                    {"name": p.name, "id": p.pod_id, "slot": p.slot}
                    | pinned.counters(p.slot).as_dict()
                    for p in pinned.pods()
                ]
                entry["links"] = len(pinned.links())
                entry["connections"] = occupancy.connections
                entry["connections_capacity"] = occupancy.connections_capacity
        elif mode == "nftables":
            for pod in topo.pods_on(target.name):
                if nftables.has_table(pod.netns):
                    counters = nftables.read_counters(pod.netns).as_dict()
                    entry["pods"].append(
                        {"name": pod.name, "id": f"{pod.namespace}/{pod.name}", "slot": 0}
                        | counters
                    )
            entry["conntrack_entries"] = sum(
                nftables.conntrack_count(p.netns) for p in topo.pods_on(target.name)
            )
        nodes.append(entry)
    return {"lab": lab, "nodes": nodes}


def trace_sources(lab: str, node: str | None) -> list[tuple[str | None, Path]]:
    _state, topo = api.load(lab)
    sources: list[tuple[str | None, Path]] = []
    others = []
    for target in _nodes(topo, node):
        mode = current_mode(topo, target)
        if mode == "ebpf":
            sources.append((target.name, pin_dir(lab, target.name)))
        elif mode == "nftables":
            others.append(target.name)
    if not sources:
        if others:
            raise CaptureError(
                f"trace needs eBPF capture; {', '.join(others)} of lab {lab!r} use nftables "
                "(its counters are in `smesh capture status`)"
            )
        raise CaptureError(
            f"nothing is captured in lab {lab!r}; run `smesh capture attach --lab {lab}` "
            "(or start the agents) first"
        )
    return sources


def captured_pods(sources: list[tuple[str | None, Path]]) -> list[str]:
    """The names of the pods captured at *sources* (what ``trace --pod`` can match)."""
    names: set[str] = set()
    for _node, directory in sources:
        with pins.PinnedCapture(directory) as pinned:
            names.update(pod.name for pod in pinned.pods())
    return sorted(names)
