"""The objects of the Service scale figures, and reading the agent's table size (pure).

Selector-less Services with EndpointSlices of our own, as a cluster with many Services has
them: each Service gets a ClusterIP from the lab's service range, its slice *per_service*
ready endpoints at addresses of :data:`ENDPOINT_RANGE`, which no node routes (nothing ever
connects to them: the figures are about holding and updating, not traffic). Every other
Service has two named ports whose slice ports name them (what a named targetPort resolves
to), the rest one unnamed port.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from smesh.bench.errors import BenchError

#: Endpoint addresses: inside the lab's 198.18.0.0/16 but above every node's /24 we use and
#: below the service range, so no route leads there (16,384 addresses).
ENDPOINT_RANGE = ipaddress.IPv4Network("198.18.128.0/18")
#: The bench lab's service range (``lab up --service-cidr``): room for 4,000 Services.
SERVICE_CIDR = "198.18.240.0/20"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY = "smesh-bench"


def name(index: int) -> str:
    return f"scale-{index}"


def _named(index: int) -> bool:
    return index % 2 == 1


def service(index: int) -> dict[str, Any]:
    """Service *index*: selector-less (its slice is ours), one or two TCP ports."""
    if _named(index):
        ports = [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "admin", "port": 9000, "targetPort": "admin", "protocol": "TCP"},
        ]
    else:
        ports = [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name(index), "labels": {"app": "scale"}},
        "spec": {"ports": ports},
    }


def endpoints(index: int, per_service: int, flipped: int | None = None) -> list[dict[str, Any]]:
    """The endpoints of Service *index*'s slice; endpoint *flipped* not ready."""
    first = index * per_service
    if (first + per_service) > ENDPOINT_RANGE.num_addresses:
        raise BenchError(
            f"{index + 1} Services of {per_service} endpoints do not fit in {ENDPOINT_RANGE}"
        )
    return [
        {
            "addresses": [str(ENDPOINT_RANGE.network_address + first + j)],
            "conditions": {"ready": j != flipped},
        }
        for j in range(per_service)
    ]


def endpoint_slice(index: int, per_service: int) -> dict[str, Any]:
    """The one EndpointSlice of Service *index*, all endpoints ready."""
    if _named(index):
        ports = [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "admin", "port": 9100, "protocol": "TCP"},
        ]
    else:
        ports = [{"name": "", "port": 8080, "protocol": "TCP"}]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name(index)}-1",
            "labels": {
                SERVICE_NAME_LABEL: name(index),
                "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
                "app": "scale",
            },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints(index, per_service),
    }


def updates(services: int, per_service: int, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """*count* merge patches (slice name, body), each turning one endpoint of a slice not
    ready (and the slice's previously flipped endpoint ready again): a readiness change,
    the commonest endpoint update of a cluster. Slices are taken in turn."""
    for n in range(count):
        index = n % services
        flipped = (n // services) % per_service
        yield f"{name(index)}-1", {"endpoints": endpoints(index, per_service, flipped)}


def table_size(metrics_text: str) -> tuple[int, int]:
    """(services, endpoints) of the agent's ``smesh_service_table`` gauge, from /metrics."""
    found = {"services": -1, "endpoints": -1}
    for line in metrics_text.splitlines():
        for kind in found:
            prefix = f'smesh_service_table{{kind="{kind}"}} '
            if line.startswith(prefix):
                found[kind] = int(float(line[len(prefix) :]))
    if min(found.values()) < 0:
        raise BenchError("the agent's /metrics has no smesh_service_table gauge")
    return found["services"], found["endpoints"]


def counter(metrics_text: str, family: str, labels: str) -> float:
    """One sample of a counter, e.g. ``smesh_service_routes_total``, ``result="tunnel"``."""
    prefix = f"{family}{{{labels}}} "
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def settled(readings: list[float], quiet: float) -> bool:
    """Whether a process has gone quiet: its last two CPU readings (seconds, taken a second
    apart) differ by less than *quiet* seconds."""
    return len(readings) >= 2 and readings[-1] - readings[-2] < quiet
