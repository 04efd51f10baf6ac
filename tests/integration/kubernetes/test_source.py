"""The Kubernetes workload source against a real kube-apiserver: what the agent is given.

Each test has its own namespaces and node names on the module's control plane; the
source is run without an agent, so what is checked is the snapshots it yields.
"""

from __future__ import annotations

import asyncio
import collections.abc
from pathlib import Path

import pytest

from smesh.agent.config import KubernetesSettings
from smesh.agent.workloads import Snapshot
from smesh.kubernetes.client import KubeApi
from smesh.kubernetes.sandboxes import RecordStore, SandboxRecord
from smesh.kubernetes.source import KubernetesSource
from smesh.lab.controlplane import ControlPlane
from tests.integration.kubernetes.kubekit import admin, delete_now, make_namespace, pod, unique
from tests.integration.kubernetes.sandboxkit import (
    Node,
    Snapshots,
    label_namespace,
    label_pod,
    set_status,
    uid_of,
)


@pytest.fixture
def node() -> collections.abc.Iterator[Node]:
    made = Node()
    try:
        yield made
    finally:
        made.cleanup()


def source_for(plane: ControlPlane, node: Node, name: str, sandbox_dir: Path) -> KubernetesSource:
    settings = KubernetesSettings(
        cni_socket=node.short_dir / "cni.sock", cgroup_driver="cgroupfs", cgroup_root=node.root
    )
    return KubernetesSource(
        KubeApi.from_kubeconfig(plane.kubeconfig),
        node=name,
        settings=settings,
        sandbox_dir=sandbox_dir,
    )


def meshed(snapshot: Snapshot, key: str) -> bool | None:
    """True/False for a known pod, None for one the snapshot does not have."""
    w = snapshot.workloads.get(key)
    return None if w is None else w.meshed


def test_registry_spans_nodes_and_label_changes_take_effect_live(
    control_plane: ControlPlane, node: Node, tmp_path: Path
) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns, plain = unique("mesh"), unique("plain")
        here, there = unique("node"), unique("node")
        await make_namespace(client, ns)
        await make_namespace(client, plain)
        await label_namespace(client, ns, "enabled")
        pods = {
            "a": (ns, here, "198.18.50.1"),
            "b": (ns, there, "198.18.50.2"),  # another node: registry only
            "c": (plain, here, "198.18.50.3"),  # namespace not opted in
            "d": (ns, here, "198.18.50.4"),  # opted out by label
            "e": (ns, here, ""),  # no address yet: in neither
        }
        for name, (namespace, node_name, _) in pods.items():
            labels = {"smesh.io/mesh": "disabled"} if name == "d" else {}
            await client.create(pod(name, namespace, node_name, **labels))
        for name, (namespace, _, ip) in pods.items():
            await set_status(client, name, namespace, [ip] if ip else [], phase="Pending")
        source = source_for(control_plane, node, here, tmp_path / "sandboxes")
        snapshots = Snapshots(source)
        snapshots.start()
        try:
            first = await snapshots.until(
                "all four pods with addresses",
                lambda s: (
                    all(f"{ns}/{p}" in s.workloads for p in "abd") and f"{plain}/c" in s.workloads
                ),
            )
            assert f"{ns}/e" not in first.workloads
            a, b = first.workloads[f"{ns}/a"], first.workloads[f"{ns}/b"]
            assert (a.node, a.meshed, [str(ip) for ip in a.ips]) == (here, True, ["198.18.50.1"])
            assert (b.node, b.meshed, b.netns, b.cgroup) == (there, True, None, None)
            assert not a.has_sandbox  # no CNI ADD yet: the agent cannot mesh it
            assert (meshed(first, f"{plain}/c"), meshed(first, f"{ns}/d")) == (False, False)
            assert set(first.on_node(here)) >= {f"{ns}/a", f"{plain}/c", f"{ns}/d"}
            assert f"{ns}/b" not in first.on_node(here)

            await label_namespace(client, ns, None)
            await snapshots.until(
                "the namespace opted out",
                lambda s: meshed(s, f"{ns}/a") is False and meshed(s, f"{ns}/b") is False,
            )
            await label_namespace(client, ns, "enabled")
            await label_pod(client, "d", ns, None)
            await label_namespace(client, plain, "enabled")
            await snapshots.until(
                "everything opted in",
                lambda s: all(meshed(s, k) for k in (f"{ns}/a", f"{ns}/d", f"{plain}/c")),
            )
            await set_status(client, "a", ns, ["198.18.50.1"], phase="Succeeded")
            await set_status(client, "e", ns, ["198.18.50.5"])
            await delete_now(client, "b", ns)
            await snapshots.until(
                "a ended, e addressed, b deleted",
                lambda s: (
                    meshed(s, f"{ns}/a") is False
                    and meshed(s, f"{ns}/e") is True
                    and f"{ns}/b" not in s.workloads
                ),
            )
        finally:
            await snapshots.stop()
            await client.close()

    asyncio.run(scenario())


def test_a_restarted_source_keeps_live_sandboxes_and_finds_unrecorded_ones(
    control_plane: ControlPlane, node: Node, tmp_path: Path
) -> None:
    """Without any CNI call: records of live pods are kept, the others dropped, and a
    running pod without a record is found from a process in its cgroup."""

    async def scenario() -> None:
        client = admin(control_plane)
        ns, here = unique("mesh"), unique("node")
        await make_namespace(client, ns)
        await label_namespace(client, ns, "enabled")
        created = {}
        for i, name in enumerate(("kept", "netns-gone", "found")):
            created[name] = await client.create(pod(name, ns, here))
            await set_status(client, name, ns, [f"198.18.51.{i + 1}"])
        store = RecordStore(tmp_path / "sandboxes")
        kept_uid = uid_of(created["kept"])

        def record(name: str, uid: str, netns: str) -> SandboxRecord:
            cgroup = node.pod_cgroup(uid)
            return SandboxRecord(uid=uid, namespace=ns, name=name, netns=netns, cgroup=cgroup)

        store.put(record("kept", kept_uid, "/proc/self/ns/net"))
        store.put(record("netns-gone", uid_of(created["netns-gone"]), "/run/netns/smk-gone"))
        ghost = "00000000-0000-4000-8000-000000000001"  # a pod deleted while no agent ran
        store.put(record("ghost", ghost, "/proc/self/ns/net"))
        found_cgroup = node.pod_cgroup(uid_of(created["found"]))
        sleeper = node.spawn_in(found_cgroup, ["sleep", "120"])
        source = source_for(control_plane, node, here, tmp_path / "sandboxes")
        snapshots = Snapshots(source)
        snapshots.start()
        try:
            s = await snapshots.until(
                "the three pods", lambda s: all(f"{ns}/{p}" in s.workloads for p in created)
            )
            kept, gone, found = (s.workloads[f"{ns}/{p}"] for p in created)
            assert (kept.netns, kept.cgroup) == ("/proc/self/ns/net", node.pod_cgroup(kept_uid))
            assert (gone.netns, gone.cgroup) == (None, None)
            assert (found.netns, found.cgroup) == (f"/proc/{sleeper.pid}/ns/net", found_cgroup)
            assert sorted(p.name for p in (tmp_path / "sandboxes").iterdir()) == [
                f"{kept_uid}.json"
            ]
        finally:
            await snapshots.stop()
            await client.close()
            sleeper.kill()
            sleeper.wait()

    asyncio.run(scenario())


def test_a_stopped_source_removes_its_socket(
    control_plane: ControlPlane, node: Node, tmp_path: Path
) -> None:
    async def scenario() -> None:
        source = source_for(control_plane, node, unique("node"), tmp_path / "sandboxes")
        snapshots = Snapshots(source)
        snapshots.start()
        await snapshots.until("the first snapshot", lambda s: True)
        assert (node.short_dir / "cni.sock").is_socket()
        await snapshots.stop()

    asyncio.run(scenario())
    assert not (node.short_dir / "cni.sock").exists()
