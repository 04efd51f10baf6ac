"""The agent's service table against a real kube-apiserver: it follows Services and
EndpointSlices as they are added, changed and deleted.

The module's control plane has no controller manager: the test writes the EndpointSlices
itself, as the EndpointSlice controller would (one per address set, labelled with the
Service's name).
"""

from __future__ import annotations

import asyncio
import collections.abc
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Service
from lightkube.resources.discovery_v1 import EndpointSlice

from smesh.kubernetes.services import ServiceTable, usable
from smesh.kubernetes.source import KubernetesSource
from smesh.lab.controlplane import ControlPlane
from tests.integration.kubernetes.kubekit import admin, make_namespace, unique
from tests.integration.kubernetes.sandboxkit import Node, Snapshots
from tests.integration.kubernetes.test_source import source_for


@pytest.fixture
def node() -> collections.abc.Iterator[Node]:
    made = Node()
    try:
        yield made
    finally:
        made.cleanup()


def service(name: str, namespace: str, **spec: Any) -> Service:
    return Service.from_dict(
        {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
                **spec,
            },
        }
    )


def endpoint_slice(
    name: str, namespace: str, service_name: str, port: int, endpoints: dict[str, bool]
) -> EndpointSlice:
    """*endpoints*: address → ready."""
    return EndpointSlice.from_dict(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": service_name},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": [address],
                    "conditions": {"ready": ready, "serving": ready, "terminating": False},
                    "targetRef": {
                        "kind": "Pod",
                        "namespace": namespace,
                        "name": f"pod-{address.rsplit('.', 1)[1]}",
                    },
                }
                for address, ready in endpoints.items()
            ],
        }
    )


def resolved(table: ServiceTable, cluster_ip: str, port: int) -> list[str] | None:
    """The usable endpoints of ClusterIP:port as "ip:port", None if no Service is there."""
    found = table.lookup(ipaddress.ip_address(cluster_ip), port)
    if found is None:
        return None
    return sorted(b.address for b in usable(table.backends(found), 4))


async def until(
    what: str, predicate: collections.abc.Callable[[], bool], timeout: float = 15
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def cluster_ip(client: AsyncClient, name: str, namespace: str) -> str:
    svc = await client.get(Service, name, namespace=namespace)
    assert svc.spec is not None
    assert svc.spec.clusterIP
    return svc.spec.clusterIP


def test_the_table_follows_services_and_endpoint_slices(
    control_plane: ControlPlane, node: Node, tmp_path: Path
) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns = unique("svc")
        await make_namespace(client, ns)
        source: KubernetesSource = source_for(
            control_plane, node, unique("node"), tmp_path / "sandboxes"
        )
        snapshots = Snapshots(source)
        snapshots.start()
        table = source.services
        try:
            # Before the source runs: a Service with two slices (named port, resolved per slice).
            await client.create(service("web", ns))
            ip = await cluster_ip(client, "web", ns)
            await client.create(endpoint_slice("web-a", ns, "web", 80, {"198.18.60.1": True}))
            await client.create(
                endpoint_slice(
                    "web-b", ns, "web", 8000, {"198.18.60.2": True, "198.18.60.3": False}
                )
            )
            await until(
                "both slices merged",
                lambda: resolved(table, ip, 8080) == ["198.18.60.1:80", "198.18.60.2:8000"],
            )
            assert source.services_synced == {"services", "endpointslices"}

            # A ready flip and a scale-up.
            await client.replace(
                endpoint_slice(
                    "web-b",
                    ns,
                    "web",
                    8000,
                    {"198.18.60.2": False, "198.18.60.3": True, "198.18.60.4": True},
                )
            )
            await until(
                "the flip and the new endpoint",
                lambda: (
                    resolved(table, ip, 8080)
                    == ["198.18.60.1:80", "198.18.60.3:8000", "198.18.60.4:8000"]
                ),
            )
            # A scale-down: one slice deleted.
            await client.delete(EndpointSlice, "web-a", namespace=ns)
            await until(
                "the slice gone",
                lambda: resolved(table, ip, 8080) == ["198.18.60.3:8000", "198.18.60.4:8000"],
            )
            # A headless Service is never held; a deleted one leaves the table.
            await client.create(service("db", ns, clusterIP="None"))
            await client.delete(Service, "web", namespace=ns)
            await until("the Service gone", lambda: resolved(table, ip, 8080) is None)
            assert table.service((ns, "web")) is None
            assert table.service((ns, "db")) is None
            held = table.counts()[1]  # web-b stays until the controller (here: the test) drops it
            await client.delete(EndpointSlice, "web-b", namespace=ns)
            await until("the last slice gone", lambda: table.counts()[1] == held - 3)
        finally:
            await snapshots.stop()
            await client.close()

    asyncio.run(scenario())
