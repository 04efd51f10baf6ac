"""Pod sandboxes as a container runtime makes them (a netns, a cgroup at the kubelet's
layout path), and the API calls a kubelet makes, for the Kubernetes source and hand-off tests.

Everything is made under names no other run uses and removed by the caller's finalizer:
network namespaces hold only their loopback link, with a 198.18.0.0/16 address (no
route leaves them), cgroups live under a unique ``cgroupRoot`` in the v2 mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.agent.workloads import Snapshot
from smesh.httpclient import exchange
from smesh.kubernetes import layout
from smesh.linux import cgroups
from tests.integration.labkit import unique_name


async def label_namespace(client: AsyncClient, name: str, value: str | None) -> None:
    """Set (or with None remove) the namespace's smesh.io/mesh label."""
    await client.patch(Namespace, name, {"metadata": {"labels": {"smesh.io/mesh": value}}})


async def label_pod(client: AsyncClient, name: str, namespace: str, value: str | None) -> None:
    patch = {"metadata": {"labels": {"smesh.io/mesh": value}}}
    await client.patch(Pod, name, patch, namespace=namespace)


async def set_status(
    client: AsyncClient, name: str, namespace: str, ips: list[str], phase: str = "Running"
) -> None:
    """What a kubelet reports once the sandbox runs: the phase and the pod's addresses."""
    status: dict[str, Any] = {"phase": phase}
    if ips:
        status |= {"podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]}
    await client.patch(Pod.Status, name, {"status": status}, namespace=namespace)


def uid_of(pod: Pod) -> str:
    assert pod.metadata is not None
    assert pod.metadata.uid is not None
    return pod.metadata.uid


@dataclass
class Node:
    """A node's share of the machine: its cgroupRoot, and the sandboxes made under it."""

    root: str = field(default_factory=lambda: "/" + unique_name("smesh-test-k8s-"))
    netns: list[str] = field(default_factory=list)
    short_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="smk-")))

    @property
    def cgroup_root(self) -> Path:
        return cgroups.v2_root() / self.root.lstrip("/")

    def pod_cgroup(self, uid: str, qos: layout.QosClass = layout.QosClass.BESTEFFORT) -> Path:
        """The pod's cgroup where a cgroupfs kubelet with this root puts it: created."""
        relative = layout.pod_cgroup(layout.CgroupDriver.CGROUPFS, self.root, qos, uid)
        return cgroups.create(cgroups.v2_root() / str(relative).lstrip("/"))

    def sandbox_netns(self, ip: str) -> str:
        """A network namespace whose only link, lo, also holds the pod's *ip* (no route
        leaves it; the machine has no dummy links); its /run/netns path."""
        name = unique_name("smk-pod-")
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.netns.append(name)
        for argv in (
            ["link", "set", "lo", "up"],
            ["addr", "add", f"{ip}/32", "dev", "lo"],
        ):
            subprocess.run(["ip", "-n", name, *argv], check=True)
        return f"/run/netns/{name}"

    def spawn_in(self, cgroup: Path, argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=lambda: cgroups.join(cgroup),  # noqa: PLW1509 - test process, no threads
        )

    def cleanup(self) -> None:
        cgroups.kill_all(self.cgroup_root)
        cgroups.remove_tree(self.cgroup_root, kill=True)
        for name in self.netns:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        shutil.rmtree(self.short_dir, ignore_errors=True)


class Snapshots:
    """Runs a workload source's watch in a task and keeps the latest snapshot."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.latest: Snapshot | None = None
        self.count = 0
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def run() -> None:
            async for snapshot in self.source.watch():
                self.latest, self.count = snapshot, self.count + 1

        self.task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def until(
        self, what: str, predicate: Callable[[Snapshot], bool], timeout: float = 30
    ) -> Snapshot:
        deadline = time.monotonic() + timeout
        while self.latest is None or not predicate(self.latest):
            if self.task is not None and self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                seen = self.latest.workloads if self.latest else None
                raise AssertionError(f"timed out waiting for {what}; last snapshot: {seen}")
            await asyncio.sleep(0.02)
        return self.latest


def handoff(path: Path, command: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """One CNI hand-off request over the agent's Unix socket, as smesh-cni sends it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(path))
        status, reply = exchange(
            sock,
            "POST",
            f"/v1/sandboxes/{command}",
            [("host", "smesh-agent"), ("content-type", "application/json")],
            json.dumps(body).encode(),
        )
    return status, json.loads(reply)


def attached_programs(cgroup: Path) -> list[str]:
    """The BPF programs attached to *cgroup* itself, as bpftool lists them."""
    out = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(cgroup)], capture_output=True, text=True, check=True
    ).stdout
    return sorted(str(p.get("attach_type")) for p in json.loads(out.strip() or "[]"))
