"""The flow log: verdicts from records, a bounded ring, followers that lose events (counted)
rather than grow the agent, and the filters."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from smesh.agent.config import ConfigError, load
from smesh.agent.flowlog import (
    Event,
    FlowCollector,
    FlowFilter,
    FlowLog,
    Follower,
    describe,
    matches_doc,
    verdict,
)
from smesh.agent.metrics import AgentMetrics
from smesh.agent.workloads import Workload
from smesh.httpserver import HttpError, Request
from tests.unit.agent.records import CLIENT, SERVER, inbound, outbound

PODS = {
    ipaddress.ip_address("198.18.1.2"): Workload(
        name="pod-1", namespace="shop", service_account="client", node="node-1", ips=["198.18.1.2"]
    ),
    ipaddress.ip_address("198.18.2.2"): Workload(
        name="pod-3", namespace="web", service_account="server", node="node-2", ips=["198.18.2.2"]
    ),
}


def lookup(ip: Any) -> Workload | None:
    return PODS.get(ip)


@pytest.mark.parametrize(
    ("route", "result", "expected"),
    [
        ("tunnel", "open", "allowed"),
        ("tunnel", "ok", "allowed"),
        ("tunnel", "reset", "allowed"),  # an app's reset, after the mesh let it through
        ("tunnel", "denied", "denied"),  # policy at the destination (403 at the source)
        ("deny", "denied", "denied"),  # nonMeshed: deny
        ("passthrough", "ok", "passthrough"),
        ("passthrough", "open", "passthrough"),
        ("passthrough", "refused", "error"),  # nothing listened there
        ("tunnel", "timeout", "error"),
        ("tunnel", "error", "error"),
        ("tunnel", "refused", "error"),  # the pod at its cap, no certificate
        ("refuse", "refused", "error"),  # a Service without endpoints
        ("", "error", "error"),  # failed before it was routed
    ],
)
def test_verdict_from_route_and_result(route: str, result: str, expected: str) -> None:
    assert verdict(route, result) == expected


def test_both_ends_of_a_tunnel_describe_the_same_pods_and_identities() -> None:
    out = outbound(bytes_from_app=100, bytes_to_app=4096)
    out.finish("ok")
    inn = inbound(bytes_from_app=4096, bytes_to_app=100)
    inn.finish("ok")
    docs = [describe(Event("close", 1.0, r), "node-x", lookup) for r in (out, inn)]
    for doc in docs:
        assert doc["source"]["pod"] == "pod-1"
        assert doc["source"]["namespace"] == "shop"
        assert doc["source"]["identity"] == CLIENT
        assert doc["destination"]["pod"] == "pod-3"
        assert doc["destination"]["namespace"] == "web"
        assert doc["destination"]["identity"] == SERVER
        assert doc["destination"]["port"] == 8080
        assert (doc["verdict"], doc["mtls"], doc["result"]) == ("allowed", True, "ok")
        assert (doc["bytes_sent"], doc["bytes_received"]) == (100, 4096)
        assert doc["node"] == "node-x"
        assert doc["time"].startswith("1970-01-01T00:00:01")
    assert docs[1]["rule"] == "allow-shop"


def test_an_open_event_has_no_counters_and_a_passthrough_is_not_mtls() -> None:
    record = outbound(route="passthrough", peer_identity="", destination_pod="")
    record.bytes_from_app = 5
    opened = describe(Event("open", 1.0, record), "n", lookup)
    assert (opened["event"], opened["result"], opened["bytes_sent"]) == ("open", "open", 0)
    assert opened["verdict"] == "passthrough"
    assert opened["mtls"] is False
    assert opened["destination"]["pod"] == "pod-3"  # from the registry: no identity
    # a tunnel still opening is mutual TLS or nothing; once closed, only if it was proven
    pending = outbound(peer_identity="")
    assert describe(Event("open", 1.0, pending), "n", lookup)["mtls"] is True
    pending.finish("timeout")
    assert describe(Event("close", 1.0, pending), "n", lookup)["mtls"] is False


def test_refused_plaintext_is_one_event_per_count() -> None:
    log = FlowLog("node-2", 8, 8, 1, lookup)
    log.refused_plaintext("web/pod-3", 3)
    line, summary = log.encoded(next(log.events()))
    doc = json.loads(line)
    assert (doc["verdict"], doc["count"], doc["destination"]["pod"]) == (
        "refused-plaintext",
        3,
        "pod-3",
    )
    assert summary.namespaces == ("", "web")


def test_the_ring_keeps_the_newest_events_and_encodes_each_once() -> None:
    log = FlowLog("n", 3, 8, 1, lookup)
    records = [outbound(request_id=str(i)) for i in range(5)]
    for record in records:
        log.closed(record)
    kept = list(log.events())
    assert [e.record.request_id for e in kept if e.record] == ["2", "3", "4"]
    line, _ = log.encoded(kept[0])
    assert kept[0].record is None  # the ring holds the line now, not the record
    assert log.encoded(kept[0])[0] is line


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def collect(follower: Follower, chunks: int) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    stream = follower.chunks()
    for _ in range(chunks):
        chunk = await anext(stream)
        docs += [json.loads(line) for line in chunk.splitlines()]
    return docs


def follow(log: FlowLog, query: str = "follow=1") -> Follower:
    response = log.serve(Request("GET", "/debug/flows", query=query))
    assert response.status == 200
    assert isinstance(response.stream, Follower)
    return response.stream


def test_a_follower_that_does_not_read_loses_events_counted_and_is_told() -> None:
    async def scenario() -> None:
        log = FlowLog("n", 100, 2, 4, lookup)
        follower = follow(log)
        for i in range(5):  # nobody reads: two queued, three dropped
            log.closed(outbound(request_id=str(i)))
        assert log.dropped == 3
        docs = await collect(follower, 2)
        assert [d.get("request_id") for d in docs[:2]] == ["0", "1"]
        assert docs[2]["event"] == "dropped"
        assert docs[2]["dropped"] == 3
        assert "admin.flowFollowerQueue" in docs[2]["detail"]
        # caught up: new events come again, and no marker without a loss
        log.closed(outbound(request_id="5"))
        assert [d["request_id"] for d in await collect(follower, 1)] == ["5"]
        metrics = AgentMetrics()
        metrics.registry.register(FlowCollector(log))
        text = metrics.render().decode()
        assert "smesh_flow_events_dropped_total 3.0" in text
        assert "smesh_flow_streams 1.0" in text
        follower.close()
        assert log.followers == 0

    run(scenario())


def test_followers_are_capped_and_a_closed_log_ends_their_streams() -> None:
    async def scenario() -> None:
        log = FlowLog("n", 100, 10, 1, lookup)
        follower = follow(log)
        with pytest.raises(HttpError) as refused:
            follow(log)
        assert refused.value.status == 503
        assert "admin.flowFollowers" in str(refused.value)
        assert log.refused == 1
        stream = follower.chunks()
        waiting = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0)
        log.close()  # the agent stops
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 5)
        assert log.followers == 0
        follow(log).close()  # a place is free again

    run(scenario())


def test_a_snapshot_is_the_ring_filtered_and_then_ends() -> None:
    async def scenario() -> None:
        log = FlowLog("n", 100, 10, 2, lookup)
        log.closed(outbound(request_id="a"))
        log.closed(outbound(request_id="b", route="deny", result="denied", peer_identity=""))
        snapshot = follow(log, "verdict=denied")
        docs = [
            json.loads(line) async for chunk in snapshot.chunks() for line in chunk.splitlines()
        ]
        assert [d["request_id"] for d in docs] == ["b"]
        snapshot.close()

    run(scenario())


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("pods=pod-1", "unknown parameter 'pods'"),
        ("verdict=dropped", "verdict 'dropped' is none of allowed, denied"),
        ("follow=yes", "follow='yes'"),
    ],
)
def test_a_bad_query_is_a_400_naming_it(query: str, message: str) -> None:
    with pytest.raises(HttpError) as bad:
        FlowFilter.parse(query)
    assert bad.value.status == 400
    assert message in str(bad.value)


def test_filters_match_either_side() -> None:
    doc = describe(Event("close", 1.0, outbound()), "n", lookup)
    assert matches_doc(FlowFilter(pod="pod-1"), doc)
    assert matches_doc(FlowFilter(pod="web/pod-3"), doc)
    assert not matches_doc(FlowFilter(pod="shop/pod-3"), doc)
    assert matches_doc(FlowFilter(namespace="web"), doc)
    assert not matches_doc(FlowFilter(namespace="default"), doc)
    assert matches_doc(FlowFilter(verdict="allowed", namespace="shop"), doc)
    assert not matches_doc(FlowFilter(verdict="denied"), doc)
    assert matches_doc(FlowFilter(verdict="denied"), {"event": "dropped", "dropped": 1})
    assert FlowFilter.parse("pod=pod-1&follow=1") == (FlowFilter(pod="pod-1"), True)
    assert FlowFilter(pod="a", verdict="error").query() == {"pod": "a", "verdict": "error"}


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        ("{flowBuffer: -1}", "admin.flowBuffer: "),
        ("{flowFollowers: 2000}", "admin.flowFollowers: "),
        ("{flowFollowerQueue: 0}", "admin.flowFollowerQueue: "),
        ("{flowFollowerQueu: 5}", "did you mean 'flowFollowerQueue'"),
    ],
)
def test_the_flow_limits_are_validated_naming_the_key(
    tmp_path: Path, admin: str, message: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(f"node: n\nworkloads: /w\nadmin: {admin}\n")
    with pytest.raises(ConfigError) as bad:
        load(path, environ={})
    assert message in str(bad.value)
    path.write_text("node: n\nworkloads: /w\n")
    defaults = load(path, environ={}).admin
    assert (defaults.flow_buffer, defaults.flow_followers, defaults.flow_follower_queue) == (
        4096,
        8,
        1024,
    )
