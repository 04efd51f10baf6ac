"""Pod + Namespace (+ sandbox) → the workload the agent meshes: the rules, one by one."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
from pathlib import Path

import pytest
from lightkube.models.core_v1 import Container, PodIP, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod

from smesh.agent.config import KubernetesSettings
from smesh.kubernetes.client import KubeApi
from smesh.kubernetes.sandboxes import SandboxRecord, wait_until
from smesh.kubernetes.source import (
    KubernetesSource,
    not_meshed_because,
    same_sandbox,
    workload_of,
)

UID = "8d2d6f2a-4f6e-4c1b-9a51-3c0e1f7b2a10"


def namespace(enabled: bool = True, name: str = "shop") -> Namespace:
    labels = {"smesh.io/mesh": "enabled"} if enabled else {"team": "x"}
    return Namespace(metadata=ObjectMeta(name=name, labels=labels))


def pod(
    *,
    labels: dict[str, str] | None = None,
    ips: tuple[str, ...] = ("198.18.1.10", "fd00:198:18:1::a"),
    phase: str = "Running",
    host_network: bool | None = None,
    service_account: str | None = "web",
    node: str | None = "node-1",
) -> Pod:
    return Pod(
        metadata=ObjectMeta(name="web-1", namespace="shop", uid=UID, labels=labels),
        spec=PodSpec(
            containers=[Container(name="main")],
            nodeName=node,
            hostNetwork=host_network,
            serviceAccountName=service_account,
        ),
        status=PodStatus(phase=phase, podIPs=[PodIP(ip=ip) for ip in ips] or None),
    )


def sandbox(ips: tuple[str, ...] = ()) -> SandboxRecord:
    return SandboxRecord(
        uid=UID,
        namespace="shop",
        name="web-1",
        container_id="c0ffee",
        netns="/run/netns/cni-1",
        cgroup=Path("/sys/fs/cgroup/kubepods/besteffort/pod" + UID),
        ips=tuple(ipaddress.ip_address(ip) for ip in ips),
    )


def test_a_pod_of_an_opted_in_namespace_is_meshed_with_its_identity_and_addresses() -> None:
    w = workload_of(pod(), namespace())
    assert w is not None
    assert (w.key, w.service_account, w.node, w.uid, w.meshed) == (
        "shop/web-1",
        "web",
        "node-1",
        UID,
        True,
    )
    assert [str(ip) for ip in w.ips] == ["198.18.1.10", "fd00:198:18:1::a"]
    assert (w.netns, w.cgroup) == (None, None)  # no sandbox known: not meshable here


def test_the_service_account_defaults_to_default() -> None:
    w = workload_of(pod(service_account=None), namespace())
    assert w is not None
    assert w.service_account == "default"


@pytest.mark.parametrize(
    ("the_pod", "the_namespace", "why"),
    [
        (pod(), namespace(enabled=False), "namespace is not labelled smesh.io/mesh=enabled"),
        (pod(), None, "namespace is not labelled"),  # namespace not seen (yet)
        (pod(labels={"smesh.io/mesh": "disabled"}), namespace(), "pod is labelled"),
        (pod(phase="Succeeded"), namespace(), r"pod has ended \(Succeeded\)"),
        (pod(phase="Failed"), namespace(), r"pod has ended \(Failed\)"),
        (pod(host_network=True), namespace(), "host network"),
    ],
)
def test_the_reasons_a_pod_is_not_meshed(
    the_pod: Pod, the_namespace: Namespace | None, why: str
) -> None:
    reason = not_meshed_because(the_pod, the_namespace)
    assert reason is not None
    assert re.search(why, reason), reason
    w = workload_of(the_pod, the_namespace)
    assert w is None or not w.meshed


def test_a_pod_label_other_than_disabled_keeps_it_meshed() -> None:
    w = workload_of(pod(labels={"smesh.io/mesh": "enabled", "app": "web"}), namespace())
    assert w is not None
    assert w.meshed


def test_an_opted_out_pod_stays_in_the_registry_as_not_meshed() -> None:
    w = workload_of(pod(labels={"smesh.io/mesh": "disabled"}), namespace())
    assert w is not None
    assert not w.meshed


def test_a_host_network_pod_is_no_destination_of_its_own() -> None:
    assert workload_of(pod(host_network=True), namespace()) is None


def test_a_pod_without_addresses_or_node_has_no_workload() -> None:
    assert workload_of(pod(ips=()), namespace()) is None
    assert workload_of(pod(node=None), namespace()) is None


def test_a_fresh_pod_takes_its_addresses_from_the_cni_result_in_its_sandbox() -> None:
    """At CNI ADD the API has no status.podIPs yet: the sandbox's addresses stand in."""
    w = workload_of(pod(ips=()), namespace(), sandbox(ips=("198.18.1.77",)))
    assert w is not None
    assert [str(ip) for ip in w.ips] == ["198.18.1.77"]
    assert w.has_sandbox
    assert (w.netns, w.cgroup) == (sandbox().netns, sandbox().cgroup)
    assert same_sandbox(w, sandbox())


def test_the_api_s_addresses_win_over_the_sandbox_s() -> None:
    w = workload_of(pod(), namespace(), sandbox(ips=("198.18.1.77",)))
    assert w is not None
    assert str(w.ips[0]) == "198.18.1.10"


def test_unparsable_addresses_are_skipped() -> None:
    w = workload_of(pod(ips=("nope", "198.18.1.10")), namespace())
    assert w is not None
    assert [str(ip) for ip in w.ips] == ["198.18.1.10"]


def test_label_changes_take_effect_on_the_next_mapping() -> None:
    """The mapping has no memory: a flipped label is read again at every snapshot."""
    ns = namespace()
    assert workload_of(pod(), ns).meshed  # type: ignore[union-attr]
    assert ns.metadata is not None
    ns.metadata.labels = {"smesh.io/mesh": "disabled"}
    assert not workload_of(pod(), ns).meshed  # type: ignore[union-attr]
    ns.metadata.labels = {"smesh.io/mesh": "enabled"}
    opted_out = pod(labels={"smesh.io/mesh": "disabled"})
    assert not workload_of(opted_out, ns).meshed  # type: ignore[union-attr]
    assert opted_out.metadata is not None
    opted_out.metadata.labels = {}
    assert workload_of(opted_out, ns).meshed  # type: ignore[union-attr]


def test_another_sandbox_of_the_same_pod_is_not_the_same() -> None:
    w = workload_of(pod(), namespace(), sandbox())
    other = sandbox().model_copy(update={"netns": "/run/netns/cni-2"})
    assert not same_sandbox(w, other)
    assert not same_sandbox(None, sandbox())


def test_a_notification_before_the_waiter_first_runs_is_not_missed(tmp_path: Path) -> None:
    """A CNI ADD that checks, finds the pod not meshed yet, and starts waiting must see a
    reconcile that lands before its waiting task is first scheduled."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    source = KubernetesSource(
        KubeApi.from_kubeconfig(kubeconfig),
        node="node-1",
        settings=KubernetesSettings(),
        sandbox_dir=tmp_path / "sandboxes",
    )
    meshed: list[bool] = []

    async def scenario() -> bool:
        waiter = asyncio.create_task(
            wait_until(lambda: bool(meshed), source._progressed, time.monotonic() + 60)
        )
        await asyncio.sleep(0)  # the waiter checks, and asks for the next notification
        meshed.append(True)
        source.reconciled({}, {})
        return await asyncio.wait_for(waiter, 20)  # missed, it would wait the whole 60 s

    assert asyncio.run(scenario())
