"""The Service scale figures' objects and readings: what the API gets, what the agent says."""

from __future__ import annotations

import ipaddress

import pytest

from smesh.bench import kubefigures, kubescale
from smesh.bench.errors import BenchError
from smesh.kubernetes.services import ServiceTable, service_info, slice_info


def _addresses(index: int, per: int) -> list[str]:
    return [ep["addresses"][0] for ep in kubescale.endpoints(index, per)]


def test_endpoint_addresses_are_unique_unrouted_and_ready() -> None:
    seen = [a for index in range(1000) for a in _addresses(index, 10)]
    assert len(set(seen)) == 10_000
    assert all(ipaddress.ip_address(a) in kubescale.ENDPOINT_RANGE for a in seen)
    assert all(ep["conditions"]["ready"] for ep in kubescale.endpoints(3, 10))


def test_the_endpoint_range_is_clear_of_nodes_and_services() -> None:
    services = ipaddress.ip_network(kubescale.SERVICE_CIDR)
    assert not kubescale.ENDPOINT_RANGE.overlaps(services)
    assert ipaddress.ip_network("198.18.127.0/24").broadcast_address < (
        kubescale.ENDPOINT_RANGE.network_address
    )


def test_too_many_endpoints_for_the_range_is_an_error() -> None:
    with pytest.raises(BenchError, match="do not fit"):
        kubescale.endpoints(2000, 10)


def test_slices_belong_to_their_service_and_name_its_ports() -> None:
    for index in (0, 1):
        svc, es = kubescale.service(index), kubescale.endpoint_slice(index, 10)
        assert "selector" not in svc["spec"]  # the slices are ours, not the controller's
        assert es["metadata"]["labels"][kubescale.SERVICE_NAME_LABEL] == svc["metadata"]["name"]
        assert {p.get("name", "") for p in svc["spec"]["ports"]} == {p["name"] for p in es["ports"]}
    named = kubescale.service(1)["spec"]["ports"]
    assert [p["targetPort"] for p in named] == ["http", "admin"]


def test_the_agents_table_takes_the_generated_objects() -> None:
    """What the agent's informer would hand over: the table resolves both port kinds."""
    from lightkube.resources.core_v1 import Service  # noqa: PLC0415
    from lightkube.resources.discovery_v1 import EndpointSlice  # noqa: PLC0415

    table = ServiceTable()
    for index, ip in ((0, "198.18.240.5"), (1, "198.18.240.6")):
        raw = kubescale.service(index)
        raw["metadata"]["namespace"] = "bench-scale"
        raw["spec"]["clusterIP"] = ip
        info = service_info(Service.from_dict(raw))
        assert info is not None
        table.set_service(info.key, info)
        es = kubescale.endpoint_slice(index, 10)
        es["metadata"]["namespace"] = "bench-scale"
        got = slice_info(EndpointSlice.from_dict(es))
        table.set_slice(("bench-scale", es["metadata"]["name"]), got)
    assert table.counts() == (2, 20)
    unnamed = table.lookup(ipaddress.ip_address("198.18.240.5"), 80)
    admin = table.lookup(ipaddress.ip_address("198.18.240.6"), 9000)
    assert unnamed is not None
    assert admin is not None
    assert {b.port for b in table.backends(unnamed)} == {8080}
    assert {b.port for b in table.backends(admin)} == {9100}
    assert len(table.backends(admin)) == 10


def test_updates_flip_one_endpoint_per_slice_in_turn() -> None:
    patches = list(kubescale.updates(3, 4, 5))
    assert [name for name, _ in patches] == [
        "scale-0-1", "scale-1-1", "scale-2-1", "scale-0-1", "scale-1-1",
    ]  # fmt: skip
    first = [ep["conditions"]["ready"] for ep in patches[0][1]["endpoints"]]
    again = [ep["conditions"]["ready"] for ep in patches[3][1]["endpoints"]]
    assert first == [False, True, True, True]
    assert again == [True, False, True, True]  # the first flipped back, the next one out


METRICS = """\
# HELP smesh_service_table What the agent holds
# TYPE smesh_service_table gauge
smesh_service_table{kind="services"} 1003.0
smesh_service_table{kind="endpoints"} 10004.0
smesh_service_routes_total{result="tunnel"} 251.0
"""


def test_table_size_and_counters_from_metrics() -> None:
    assert kubescale.table_size(METRICS) == (1003, 10004)
    assert kubescale.counter(METRICS, "smesh_service_routes_total", 'result="tunnel"') == 251
    assert kubescale.counter(METRICS, "smesh_service_routes_total", 'result="deny"') == 0
    with pytest.raises(BenchError, match="smesh_service_table"):
        kubescale.table_size("smesh_up 1\n")


def test_settled_needs_two_readings_close_together() -> None:
    assert not kubescale.settled([1.0], 0.02)
    assert not kubescale.settled([1.0, 1.5], 0.02)
    assert kubescale.settled([1.0, 1.5, 1.51], 0.02)


def test_round_trip_figures_and_their_difference() -> None:
    samples = {
        "pod": {"rtt_us": [100.0, 110.0, 120.0, 400.0], "connect_us": [900.0, 1000.0]},
        "svc": {"rtt_us": [104.0, 112.0, 130.0, 500.0], "connect_us": [950.0, 1100.0]},
    }
    got = kubefigures.round_trips(samples)
    assert got["pod_rtt_p50_us"] == 110.0
    assert got["svc_rtt_p50_us"] == 112.0
    assert got["svc_rtt_delta_p50_us"] == 2.0
    assert got["pod_rtt_p99_us"] == 400.0
    assert got["svc_connect_p50_us"] == 950.0
    assert set(got) <= set(kubefigures.FIGURE_NAMES)
    with pytest.raises(BenchError, match="svc"):
        kubefigures.round_trips({**samples, "svc": {"rtt_us": [], "connect_us": [1.0]}})
