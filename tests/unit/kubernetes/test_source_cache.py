"""The source's economies: lean pods, and Workloads built again only when their inputs change."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightkube.models.core_v1 import Container, PodIP, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.kubernetes.client import PODS
from smesh.kubernetes.errors import WatchProtocolError
from smesh.kubernetes.sandboxes import SandboxRecord
from smesh.kubernetes.source import (
    LEAN_PODS,
    WorkloadCache,
    lean_pod,
    not_meshed_because,
    workload_of,
)

UID = "0f0e0d0c-0b0a-0908-0706-050403020100"
KEY = ("shop", "web-1")


def namespace(version: str = "1", enabled: bool = True) -> Namespace:
    labels = {"smesh.io/mesh": "enabled"} if enabled else {}
    return Namespace(
        metadata=ObjectMeta(name="shop", uid="ns-uid", resourceVersion=version, labels=labels)
    )


def pod(version: str = "10", ip: str = "198.18.1.10", uid: str = UID) -> Pod:
    return Pod(
        metadata=ObjectMeta(name="web-1", namespace="shop", uid=uid, resourceVersion=version),
        spec=PodSpec(containers=[Container(name="main")], nodeName="node-1"),
        status=PodStatus(phase="Running", podIPs=[PodIP(ip=ip)]),
    )


def sandbox() -> SandboxRecord:
    return SandboxRecord(
        uid=UID,
        namespace="shop",
        name="web-1",
        netns="/run/netns/cni-1",
        cgroup=Path("/sys/fs/cgroup/kubepods/besteffort/pod" + UID),
    )


def build(cache: WorkloadCache, *args: object) -> object:
    result = cache.get(KEY, *args)  # type: ignore[arg-type]
    cache.done()
    return result


def test_an_unchanged_pod_keeps_its_workload_object() -> None:
    cache = WorkloadCache()
    first = build(cache, pod(), namespace())
    assert first == workload_of(pod(), namespace())
    assert build(cache, pod(), namespace()) is first


def test_a_new_resource_version_of_the_pod_builds_it_again() -> None:
    cache = WorkloadCache()
    build(cache, pod(), namespace())
    changed = build(cache, pod(version="11", ip="198.18.1.11"), namespace())
    assert changed == workload_of(pod(version="11", ip="198.18.1.11"), namespace())


def test_a_namespace_label_change_takes_effect() -> None:
    cache = WorkloadCache()
    meshed = build(cache, pod(), namespace())
    plain = build(cache, pod(), namespace(version="2", enabled=False))
    assert getattr(meshed, "meshed", None) is True
    assert getattr(plain, "meshed", None) is False
    assert build(cache, pod(), None) == workload_of(pod(), None)


def test_a_sandbox_arriving_takes_effect() -> None:
    cache = WorkloadCache()
    build(cache, pod(), namespace())
    with_sandbox = build(cache, pod(), namespace(), sandbox())
    assert getattr(with_sandbox, "netns", None) == "/run/netns/cni-1"


def test_a_recreated_pod_of_the_same_name_and_version_is_built_again() -> None:
    cache = WorkloadCache()
    build(cache, pod(), namespace())
    other = "1f0e0d0c-0b0a-0908-0706-050403020100"
    assert getattr(build(cache, pod(uid=other), namespace()), "uid", None) == other


def test_a_pod_left_out_of_a_build_is_forgotten() -> None:
    cache = WorkloadCache()
    first = build(cache, pod(), namespace())
    cache.done()  # a build without the pod: it was deleted
    assert build(cache, pod(), namespace()) is not first


def test_an_object_without_resource_version_is_never_cached() -> None:
    cache = WorkloadCache()
    bare = Pod(
        metadata=ObjectMeta(name="web-1", namespace="shop", uid=UID),
        spec=PodSpec(containers=[Container(name="main")], nodeName="node-1"),
        status=PodStatus(podIPs=[PodIP(ip="198.18.1.10")]),
    )
    first = build(cache, bare, namespace())
    assert build(cache, bare, namespace()) is not first
    assert build(cache, bare, namespace()) == first


def raw_pod() -> dict[str, object]:
    """A pod as the API server sends it (trimmed), with what the agent never reads."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "uid": UID,
            "resourceVersion": "10",
            "labels": {"app": "web", "smesh.io/mesh": "disabled"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}" * 200},
            "deletionTimestamp": "2026-12-02T21:00:00Z",
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}] * 5,
        },
        "spec": {
            "nodeName": "node-1",
            "hostNetwork": True,
            "serviceAccountName": "web",
            "containers": [{"name": "main", "image": "none", "command": ["sleep", "9"]}],
            "volumes": [{"name": "token", "projected": {"sources": []}}],
        },
        "status": {
            "phase": "Running",
            "qosClass": "BestEffort",
            "podIP": "198.18.1.10",
            "podIPs": [{"ip": "198.18.1.10"}, {"ip": "fd00:198:18:1::a"}],
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0,
                                   "image": "none", "imageID": "", "state": {}}],
        },
    }  # fmt: skip


def test_a_lean_pod_keeps_what_the_agent_reads() -> None:
    full = PODS.decode(raw_pod())
    lean = LEAN_PODS.decode(raw_pod())
    assert lean.metadata is not None
    assert full.metadata is not None
    assert lean.metadata.managedFields is None
    assert lean.metadata.annotations is None
    assert lean.metadata.labels == full.metadata.labels
    assert lean.metadata.deletionTimestamp == full.metadata.deletionTimestamp
    assert lean.metadata.resourceVersion == "10"
    assert lean.spec is not None
    assert lean.status is not None
    assert [c.name for c in lean.spec.containers] == ["main"]
    assert lean.spec.volumes is None
    assert lean.status.containerStatuses is None
    assert lean.status.qosClass == "BestEffort"
    for host_network in (True, False):
        raw = raw_pod()
        raw["spec"]["hostNetwork"] = host_network  # type: ignore[index]
        raw["metadata"]["labels"] = {"app": "web"}  # type: ignore[index]
        assert workload_of(LEAN_PODS.decode(raw), namespace()) == workload_of(
            PODS.decode(raw), namespace()
        )
        assert not_meshed_because(LEAN_PODS.decode(raw), namespace()) == not_meshed_because(
            PODS.decode(raw), namespace()
        )


def test_what_is_not_a_pod_is_still_refused_by_the_decoder() -> None:
    with pytest.raises(WatchProtocolError):
        LEAN_PODS.decode(["not", "an", "object"])
    assert lean_pod("text") == "text"
