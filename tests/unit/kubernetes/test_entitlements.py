"""The signer's entitlements from pods: bound and unfinished pods entitle their node only."""

from __future__ import annotations

import pytest
from lightkube.models.core_v1 import Container, PodSpec, PodStatus
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.cli import main
from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.entitlements import PodEntitlements, entitlement
from smesh.kubernetes.store import Event, EventType, Synced

TD = "cluster.local"
WEB = SpiffeId(TD, "shop", "web")


def pod(
    name: str = "web-1",
    node: str | None = "node-1",
    account: str | None = "web",
    phase: str | None = "Running",
    namespace: str = "shop",
) -> Pod:
    return Pod(
        metadata=ObjectMeta(name=name, namespace=namespace, uid=f"uid-{name}", resourceVersion="1"),
        spec=PodSpec(
            nodeName=node,
            serviceAccountName=account,
            containers=[Container(name="main", image="none")],
        ),
        status=PodStatus(phase=phase),
    )


def event(kind: EventType, obj: Pod) -> Event[Pod]:
    assert obj.metadata is not None
    return Event(kind, (obj.metadata.namespace or "", obj.metadata.name or ""), obj)


def synced(*items: Event[Pod]) -> PodEntitlements:
    table = PodEntitlements(TD)
    for item in items:
        table.apply(item)
    table.apply(Synced("1", relist=False))
    return table


def test_a_bound_running_pod_entitles_its_node_only() -> None:
    table = synced(event(EventType.ADDED, pod()))
    assert table.allowed("node-1", WEB)
    assert not table.allowed("node-2", WEB)
    assert not table.allowed("node-1", SpiffeId(TD, "shop", "db"))
    assert not table.allowed("node-1", SpiffeId(TD, "other", "web"))
    assert table.pairs() == {("node-1", WEB)}


def test_nothing_is_allowed_before_the_first_list_is_complete() -> None:
    table = PodEntitlements(TD)
    table.apply(event(EventType.ADDED, pod()))
    assert not table.allowed("node-1", WEB)
    assert table.pairs() == set()
    table.apply(Synced("1", relist=False))
    assert table.allowed("node-1", WEB)


def test_no_service_account_means_default() -> None:
    assert entitlement(pod(account=None), TD) == ("node-1", SpiffeId(TD, "shop", "default"))


def test_unbound_and_finished_pods_entitle_nothing() -> None:
    assert entitlement(pod(node=None), TD) is None
    assert entitlement(pod(phase="Succeeded"), TD) is None
    assert entitlement(pod(phase="Failed"), TD) is None
    assert entitlement(pod(phase="Pending"), TD) == ("node-1", WEB)
    assert entitlement(pod(phase=None), TD) == ("node-1", WEB)


def test_deletion_finishing_and_rebinding_revoke() -> None:
    table = synced(event(EventType.ADDED, pod()))
    table.apply(event(EventType.MODIFIED, pod(phase="Succeeded")))
    assert not table.allowed("node-1", WEB)

    table.apply(event(EventType.MODIFIED, pod(phase="Running")))
    assert table.allowed("node-1", WEB)
    table.apply(event(EventType.DELETED, pod()))
    assert not table.allowed("node-1", WEB)
    assert table.pairs() == set()


def test_a_node_stays_entitled_while_any_replica_runs_there() -> None:
    a, b = pod("web-a"), pod("web-b")
    table = synced(event(EventType.ADDED, a), event(EventType.ADDED, b))
    table.apply(event(EventType.DELETED, a))
    assert table.allowed("node-1", WEB)
    table.apply(event(EventType.DELETED, b))
    assert not table.allowed("node-1", WEB)


def test_a_pod_bound_after_creation_entitles_from_then_on() -> None:
    table = synced(event(EventType.ADDED, pod(node=None)))
    assert table.pairs() == set()
    table.apply(event(EventType.MODIFIED, pod(node="node-2")))
    assert table.pairs() == {("node-2", WEB)}


@pytest.mark.parametrize(
    "source",
    [[], ["--workloads", "/tmp/w", "--kubeconfig", "/tmp/k"]],
    ids=["neither", "both"],
)
def test_ca_serve_takes_either_workloads_or_kubeconfig(
    source: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["ca", "serve", "--socket", "/tmp/s", *source])
    assert exc.value.code == 2
    assert "--workloads" in capsys.readouterr().err
