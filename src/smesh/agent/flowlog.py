"""The agent's flow log: each connection's open and close, for ``GET /debug/flows`` and
``smesh flows`` (what ``hubble observe`` is to Cilium).

The data path only appends: an event is the connection's record and the time, put in a
bounded ring of recent events (``admin.flowBuffer``) and in the bounded queue of each
follower (``admin.flowFollowerQueue``). Describing an event (pods, namespaces, verdict) and
encoding it as JSON happens at most once per event, in the task of the first follower or
request that sends it, never on the data path; a follower that falls behind loses events
(counted, and a marker line in its stream tells it how many), never the agent's memory.

An event is described when it is first sent, from the record as it is then: an open event
sent a moment later names the destination and the peer's proven identity the connection
has found by then (an outbound connection is opened before its destination is looked up),
but never its counters, which belong to its close event.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import ipaddress
import json
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from smesh.agent.workloads import Workload
from smesh.dataplane.budget import address_of
from smesh.dataplane.records import ConnectionRecord, Observer
from smesh.httpserver import HttpError, Request, Response

#: What ``verdict`` says of a connection; ``refused-plaintext`` comes from capture's counters.
VERDICTS = ("allowed", "denied", "passthrough", "refused-plaintext", "error")
#: Results after which the mesh's decision stands as made (a reset: an app's, after it).
_CARRIED = frozenset({"open", "ok", "reset"})
#: Events described and encoded in one go before the loop gets a turn (µs each).
BATCH = 64
QUERY_KEYS = ("follow", "pod", "namespace", "verdict")

Lookup = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], Workload | None]


def verdict(route: str, result: str) -> str:
    """The mesh's decision on a connection, from what its record says.

    ``denied``: a policy rule (or an allow-list, or the default) refused it, a peer was not
    admitted, or its destination is outside the mesh with ``nonMeshed: deny``;
    ``allowed``/``passthrough``: tunnelled over mutual TLS / connected in plain text, and
    going or ended (an app's reset included); ``error``: anything that kept it from being
    carried (no route yet, a Service without endpoints, a connect or handshake that failed,
    a pod at its cap or without its certificate).
    """
    if result == "denied" or route == "deny":
        return "denied"
    if result in _CARRIED and route == "tunnel":
        return "allowed"
    if result in _CARRIED and route == "passthrough":
        return "passthrough"
    return "error"


def namespace_of(identity: str) -> str:
    """``spiffe://td/ns/NS/sa/SA`` → ``NS`` ("" for anything else)."""
    parts = identity.removeprefix("spiffe://").split("/")
    return parts[2] if len(parts) == 5 and parts[1] == "ns" else ""


def _port(authority: str) -> int:
    _host, _, port = authority.rpartition(":")
    return int(port) if port.isdigit() else 0


def _stamp(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="microseconds")


class Event:
    """One thing the flow log saw; described and encoded once, when first sent."""

    __slots__ = ("count", "kind", "line", "pod", "record", "summary", "when")

    def __init__(
        self,
        kind: str,
        when: float,
        record: ConnectionRecord | None = None,
        pod: str = "",
        count: int = 0,
    ) -> None:
        self.kind = kind  # open | close | refused (plaintext, counted by capture)
        self.when = when
        self.record = record
        self.pod = pod  # "refused": the pod (namespace/name) whose app was protected
        self.count = count
        self.line: bytes | None = None
        self.summary: Summary | None = None


@dataclass(frozen=True)
class Summary:
    """What a filter looks at, kept beside the encoded line."""

    pods: tuple[str, ...]  # name and namespace/name of each side
    namespaces: tuple[str, ...]
    verdict: str


def _side(pod: str, namespace: str, identity: str, address: str) -> dict[str, Any]:
    return {
        "pod": pod,
        "namespace": namespace,
        "identity": identity,
        "address": address,
    }


def _workload(lookup: Lookup, authority: str) -> Workload | None:
    try:
        return lookup(ipaddress.ip_address(address_of(authority)))
    except ValueError:
        return None


def describe(event: Event, node: str, lookup: Lookup) -> dict[str, Any]:
    """The JSON object of *event*; *lookup* finds the pod at an address (the registry)."""
    if event.record is None:  # capture refused plain TCP to a meshed pod's app
        namespace, _, name = event.pod.rpartition("/")
        return {
            "time": _stamp(event.when),
            "node": node,
            "event": event.kind,
            "verdict": "refused-plaintext",
            "rule": "capture.inboundPlaintext",
            "direction": "inbound",
            "source": _side("", "", "", ""),
            "destination": {**_side(name, namespace, "", ""), "port": 0},
            "mtls": False,
            "count": event.count,
            "result": "refused",
            "detail": f"{event.count} plain TCP connection attempt(s) from outside the mesh "
            "refused by capture (capture.inboundPlaintext: refuse; sources are not recorded)",
        }
    r = event.record
    closed = event.kind == "close"
    if r.direction == "outbound":
        here = _workload(lookup, r.source)
        target = r.endpoint or r.destination
        there = _workload(lookup, target) if target else None
        source = _side(
            r.pod, here.namespace if here else namespace_of(r.identity), r.identity, r.source
        )
        destination = _side(
            r.destination_pod or (there.name if there else ""),
            there.namespace if there else namespace_of(r.peer_identity),
            r.peer_identity,
            target,
        )
    else:
        there = _workload(lookup, r.source)
        source = _side(
            there.name if there else "",
            there.namespace if there else namespace_of(r.peer_identity),
            r.peer_identity,
            r.source,
        )
        target = r.destination
        destination = _side(r.pod, namespace_of(r.identity), r.identity, target)
    return {
        "time": _stamp(event.when),
        "node": node,
        "event": event.kind,
        "verdict": verdict(r.route, r.result),
        "rule": r.rule,
        "direction": r.direction,
        "source": source,
        "destination": {**destination, "port": _port(target)},
        "service": r.service,
        # proven once closed; while open, a tunnel is mutual TLS or nothing (it fails)
        "mtls": r.mtls if closed else r.mtls or r.route == "tunnel",
        "bytes_sent": r.bytes_sent if closed else 0,
        "bytes_received": r.bytes_received if closed else 0,
        "duration_s": round(r.duration, 6) if closed else 0.0,
        "result": r.result if closed else "open",
        "detail": r.detail if closed else "",
        "request_id": r.request_id,
    }


def summary_of(doc: dict[str, Any]) -> Summary:
    sides = (doc["source"], doc["destination"])
    pods: list[str] = []
    for side in sides:
        if side["pod"]:
            pods += [side["pod"], f"{side['namespace']}/{side['pod']}"]
    return Summary(tuple(pods), tuple(s["namespace"] for s in sides), doc["verdict"])


@dataclass(frozen=True)
class FlowFilter:
    """``--pod``, ``--namespace``, ``--verdict``: an event matches if either side does."""

    pod: str | None = None  # NAME or NAMESPACE/NAME
    namespace: str | None = None
    verdict: str | None = None

    @classmethod
    def parse(cls, query: str) -> tuple[FlowFilter, bool]:
        """The filter and ``follow`` of a query string; HttpError 400 names a bad key."""
        try:
            pairs = urllib.parse.parse_qsl(query, strict_parsing=bool(query))
        except ValueError:
            raise HttpError(400, f"bad query {query!r}") from None
        values: dict[str, str] = {}
        for key, value in pairs:
            if key not in QUERY_KEYS:
                raise HttpError(400, f"unknown parameter {key!r} (known: {', '.join(QUERY_KEYS)})")
            values[key] = value
        verdict_ = values.get("verdict")
        if verdict_ is not None and verdict_ not in VERDICTS:
            raise HttpError(400, f"verdict {verdict_!r} is none of {', '.join(VERDICTS)}")
        follow = values.get("follow", "0")
        if follow not in ("0", "1", "true", "false"):
            raise HttpError(400, f"follow={follow!r}: use follow=1")
        found = cls(values.get("pod") or None, values.get("namespace") or None, verdict_)
        return found, follow in ("1", "true")

    def matches(self, summary: Summary) -> bool:
        return (
            (self.pod is None or self.pod in summary.pods)
            and (self.namespace is None or self.namespace in summary.namespaces)
            and (self.verdict is None or self.verdict == summary.verdict)
        )

    def query(self) -> dict[str, str]:
        """The query parameters that ask an agent for this filter."""
        found = {"pod": self.pod, "namespace": self.namespace, "verdict": self.verdict}
        return {k: v for k, v in found.items() if v is not None}


def matches_doc(flow_filter: FlowFilter, doc: dict[str, Any]) -> bool:
    """The filter applied to an event's JSON object (markers always pass)."""
    if "source" not in doc:
        return True
    return flow_filter.matches(summary_of(doc))


class Follower:
    """One ``/debug/flows`` response: the ring's events, or (following) the new ones.

    Its queue holds at most *limit* events; past it, events are dropped for this follower
    only and counted, and a marker line says how many once it reads again. A follower that
    stops reading keeps its place (a paused pager is a client too) and its queue's worth
    of events, no more.
    """

    def __init__(
        self,
        log: FlowLog,
        flow_filter: FlowFilter,
        replay: Sequence[Event],
        follow: bool,
    ) -> None:
        self._log = log
        self._filter = flow_filter
        self._replay = replay
        self._follow = follow
        self._queue: collections.deque[Event] = collections.deque()
        self._wake = asyncio.Event()
        self._closed = False
        self.dropped = 0  # since the last marker

    def put(self, event: Event) -> None:
        """The data path's part: no more than an append (or a count)."""
        if len(self._queue) >= self._log.queue_limit:
            self.dropped += 1
            self._log.dropped += 1
            return
        self._queue.append(event)
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._log.forget(self)

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._replay), BATCH):
            yield self._lines(self._replay[start : start + BATCH])
            await asyncio.sleep(0)
        self._replay = ()
        while self._follow and not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
                yield self._lines(batch)
                await asyncio.sleep(0)
            if self.dropped:
                yield self._marker()

    def _lines(self, events: Sequence[Event]) -> bytes:
        out = []
        for event in events:
            line, summary = self._log.encoded(event)
            if self._filter.matches(summary):
                out.append(line)
        return b"".join(out)

    def _marker(self) -> bytes:
        dropped, self.dropped = self.dropped, 0
        doc = {
            "time": _stamp(time.time()),
            "node": self._log.node,
            "event": "dropped",
            "dropped": dropped,
            "detail": f"this stream fell {self._log.queue_limit} events behind "
            "(admin.flowFollowerQueue); the events after were not sent to it",
        }
        return json.dumps(doc).encode() + b"\n"


class FlowLog:
    """The ring of recent events and the followers of new ones (module docstring)."""

    def __init__(
        self,
        node: str,
        capacity: int,
        queue_limit: int,
        max_followers: int,
        lookup: Lookup = lambda _ip: None,
    ) -> None:
        self.node = node
        self.queue_limit = queue_limit
        self.max_followers = max_followers
        self.lookup = lookup
        self._ring: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._followers: set[Follower] = set()
        self.dropped = 0  # events a follower's full queue had no room for, all followers
        self.refused = 0  # /debug/flows requests turned away at admin.flowFollowers

    # -- the data path's side: appends only ----------------------------------------------

    def add(self, event: Event) -> None:
        self._ring.append(event)
        for follower in self._followers:
            follower.put(event)

    def opened(self, record: ConnectionRecord) -> None:
        self.add(Event("open", time.time(), record))

    def closed(self, record: ConnectionRecord) -> None:
        self.add(Event("close", time.time(), record))

    def refused_plaintext(self, pod: str, count: int) -> None:
        """Capture refused *count* plain TCP connects to *pod* (``namespace/name``)."""
        self.add(Event("refused", time.time(), pod=pod, count=count))

    # -- the followers' side -------------------------------------------------------------

    def encoded(self, event: Event) -> tuple[bytes, Summary]:
        if event.line is None or event.summary is None:
            doc = describe(event, self.node, self.lookup)
            event.line = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
            event.summary = summary_of(doc)
            event.record = None  # described for good: the ring keeps the line, not the record
        return event.line, event.summary

    def serve(self, request: Request) -> Response:
        """``GET /debug/flows[?follow=1&pod=P&namespace=N&verdict=V]``: JSON lines."""
        flow_filter, follow = FlowFilter.parse(request.query)
        if len(self._followers) >= self.max_followers:
            self.refused += 1
            raise HttpError(
                503,
                f"{len(self._followers)} flow streams are open (admin.flowFollowers); "
                "try again when one ends",
            )
        follower = Follower(self, flow_filter, () if follow else list(self._ring), follow)
        self._followers.add(follower)
        return Response(200, b"", "application/x-ndjson", stream=follower)

    def forget(self, follower: Follower) -> None:
        self._followers.discard(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)

    def close(self) -> None:
        """End every stream (the agent stops): each gets its last chunk."""
        for follower in list(self._followers):
            follower.close()

    def events(self) -> Iterator[Event]:
        return iter(self._ring)


class FlowObserver:
    """The data plane's observer, and the flow log beside it."""

    def __init__(self, inner: Observer, log: FlowLog) -> None:
        self.inner = inner
        self.log = log

    def opened(self, record: ConnectionRecord) -> None:
        self.inner.opened(record)
        self.log.opened(record)

    def closed(self, record: ConnectionRecord) -> None:
        self.inner.closed(record)
        self.log.closed(record)

    def handshake(self, side: str, seconds: float, resumed: bool) -> None:
        self.inner.handshake(side, seconds, resumed)

    def tunnel_ready(self, seconds: float) -> None:
        self.inner.tunnel_ready(seconds)

    def carriers(self, side: str, delta: int) -> None:
        self.inner.carriers(side, delta)

    def turned_away(self, direction: str, reason: str) -> None:
        self.inner.turned_away(direction, reason)


class FlowCollector(Collector):
    """The flow log's counters, read when scraped (the data path only adds to ints)."""

    def __init__(self, log: FlowLog) -> None:
        self._log = log

    def collect(self) -> Iterator[Metric]:
        dropped = CounterMetricFamily(
            "smesh_flow_events_dropped",
            "Flow events not sent to a /debug/flows follower whose queue was full "
            "(admin.flowFollowerQueue): it did not read fast enough.",
        )
        dropped.add_metric([], self._log.dropped)
        refused = CounterMetricFamily(
            "smesh_flow_streams_refused",
            "/debug/flows requests answered 503 at admin.flowFollowers open streams.",
        )
        refused.add_metric([], self._log.refused)
        open_ = GaugeMetricFamily("smesh_flow_streams", "/debug/flows responses being sent now.")
        open_.add_metric([], self._log.followers)
        yield from (dropped, refused, open_)

    def describe(self) -> Iterator[Metric]:
        return iter(())
