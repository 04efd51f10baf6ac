"""Connections and bytes per edge (source workload → destination workload), as Istio counts.

The four counters carry Istio's standard TCP labels (``reporter``, ``source_workload``,
``source_workload_namespace``, ``source_principal``, the same three of the destination, and
``connection_security_policy``), so a service graph and an mTLS share can be drawn from
them; they are named ``smesh_tcp_*`` rather than ``istio_tcp_*`` (docs/agent.md, "Metrics").

Label sets are workload pairs, never anything of one connection, and there are at most
``limits.maxMetricLabelSets`` of them: a connection that would make one more is counted in
its reporter's and security policy's overflow set instead (its workload, namespace and
principal labels ``overflow``), and in ``smesh_tcp_connections_folded_total``. A set whose
connections have all closed and that has counted nothing for ``limits.metricLabelSetExpiry``
is dropped, so edges of workloads that are gone (a CronJob's runs, bare pods) do not fill
the cap for the agent's life; Prometheus reads a set that comes back as a counter reset.

Nothing here runs per byte: the relays keep their counts in the connection's record; they
are read when the connection closes and, for connections still open, at every scrape, so a
long-lived connection's bytes show while it lasts.

A scrape is written by :meth:`EdgeCounters.exposition`, not by prometheus_client's
``generate_latest``, which escapes and sorts every label of every sample anew: at the cap
(four counters of 1000 label sets) that held the event loop, and every connection of the
node with it, for about 36 ms per scrape. Each set's label text is made once, at the first
scrape that shows it, and later scrapes only write the numbers (byte for byte what
``generate_latest`` writes: tests/unit/agent/test_traffic.py).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

from prometheus_client import utils
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from smesh.agent.workloads import Registry, Workload
from smesh.dataplane.records import ConnectionRecord
from smesh.identity.spiffe import SpiffeId
from smesh.validation import IPAddress

UNKNOWN = "unknown"
OVERFLOW = "overflow"
#: The labels of the four counters, in order (Istio's names).
EDGE_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "connection_security_policy",
)
#: limits.maxMetricLabelSets' default: four counters each, so at most 4000 series (about
#: 1.5 MB of a scrape at their label lengths), far above a node's usual workload pairs.
DEFAULT_MAX_LABEL_SETS = 1000
#: How the text format writes a number (the library's function, which has no annotations).
_go_float = cast(Callable[[float], str], utils.floatToGoString)
#: limits.metricLabelSetExpiry's default: far longer than any scrape interval, so a set's
#: last counts are scraped before it goes.
DEFAULT_LABEL_SET_EXPIRY = 600.0
#: At the cap, expired sets are looked for at most this often (seconds) before folding.
CAP_SWEEP_INTERVAL = 1.0

Edge = tuple[str, str, str, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Party:
    """One end of an edge: its workload, the workload's namespace, its SPIFFE ID."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    principal: str = UNKNOWN


UNKNOWN_PARTY = Party()


def security_policy(route: str) -> str:
    """``mutual_tls`` for a tunnelled connection; ``none`` for one passed through in plain
    text (or refused before any was carried); ``unknown`` before it was routed."""
    if route == "tunnel":
        return "mutual_tls"
    return "none" if route else UNKNOWN


def edge(record: ConnectionRecord, local: Party, remote: Party) -> Edge:
    """The label set of *record*, whose pod (this node's) is *local* and whose peer *remote*.

    The outbound side reports as the source, the inbound side as the destination: one
    tunnelled connection is counted by both agents, once under each reporter.
    """
    policy = security_policy(record.route)
    if record.direction == "outbound":
        source, destination, reporter = local, remote, "source"
    else:
        source, destination, reporter = remote, local, "destination"
    return (
        reporter,
        source.workload,
        source.namespace,
        source.principal,
        destination.workload,
        destination.namespace,
        destination.principal,
        policy,
    )


def address_of(authority: str) -> IPAddress | None:
    """The address of ``1.2.3.4:80`` or ``[::1]:80``; None if *authority* is neither."""
    host = authority.rpartition(":")[0].removeprefix("[").removesuffix("]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def overflow(labels: Edge) -> Edge:
    """The set a connection is counted in once the cap is reached: reporter and security
    policy kept (both bounded), the rest ``overflow``."""
    return (labels[0], *(OVERFLOW,) * 6, labels[7])


class EdgeResolver:
    """A connection record → its label set of the smesh_tcp_* counters (EdgeCounters, below).

    This node's pod is known by its runtime; the peer by its address in the registry (the
    destination the app dialled, or the Service endpoint chosen; inbound, the source agent's
    address, which is its pod's). An address the registry does not know is ``unknown``; a
    known pod that is not meshed has its workload and namespace but no principal.
    """

    def __init__(
        self,
        registry: Registry,
        local: Callable[[str, str], Workload | None],
        identity_of: Callable[[Workload], SpiffeId],
    ) -> None:
        self.registry = registry
        self.local = local  # (pod name, its SPIFFE ID) → its workload, if this node serves it
        self.identity_of = identity_of

    def __call__(self, record: ConnectionRecord) -> Edge:
        pod = self.local(record.pod, record.identity)
        if pod is not None:
            here = Party(pod.workload_label, pod.namespace, record.identity or UNKNOWN)
        else:
            here = Party(record.pod or UNKNOWN, UNKNOWN, record.identity or UNKNOWN)
        if record.direction == "outbound":
            address = address_of(record.endpoint or record.destination)
        else:
            address = address_of(record.source)
        peer = self.registry.lookup(address) if address is not None else None
        principal = record.peer_identity
        if peer is None:
            return edge(record, here, Party(principal=principal or UNKNOWN))
        if not principal and record.route == "tunnel" and peer.meshed:
            principal = str(self.identity_of(peer))  # the identity it must prove
        return edge(record, here, Party(peer.workload_label, peer.namespace, principal or UNKNOWN))


class _LabelSet:
    """One label set's counters, when it last counted anything, and its text in a scrape."""

    __slots__ = ("capped", "counts", "text", "touched")

    def __init__(self, capped: bool, now: float) -> None:
        self.counts = [0, 0, 0, 0]  # opened, closed, sent bytes, received bytes
        self.capped = capped  # counted against the cap (an overflow set is not)
        self.touched = now
        self.text = ""  # made at the first scrape that shows it


class _Open:
    """A connection being counted: its label set once known, and the bytes counted so far."""

    __slots__ = ("received", "record", "sent", "set")

    def __init__(self, record: ConnectionRecord) -> None:
        self.record = record
        self.set: _LabelSet | None = None  # its label set, once resolved
        self.sent = 0  # destination → source (Istio's "sent": the response)
        self.received = 0  # source → destination (Istio's "received": the request)


class EdgeCounters(Collector):
    """``smesh_tcp_connections_opened_total``, ``..._closed_total``, ``smesh_tcp_sent_bytes_total``
    and ``smesh_tcp_received_bytes_total``, per edge, with the cap on label sets.

    *resolve* gives a record's label set (the agent's registry knows the peers); it is asked
    once per connection, the first time the connection is counted: at the first scrape while
    it is open, or when it closes. A set is dropped once none of its connections is open and
    it has counted nothing for *expiry* seconds (0: never), at a scrape or, at the cap, before
    a new edge would be folded.
    """

    def __init__(
        self,
        resolve: Callable[[ConnectionRecord], Edge] | None = None,
        max_label_sets: int = DEFAULT_MAX_LABEL_SETS,
        expiry: float = DEFAULT_LABEL_SET_EXPIRY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolve = resolve or _unresolved
        self.max_label_sets = max_label_sets
        self.expiry = expiry
        self.clock = clock
        self._sets: dict[Edge, _LabelSet] = {}
        self._open: dict[int, _Open] = {}
        self._capped = 0  # label sets counted against the cap (overflow sets are not)
        self._swept = float("-inf")  # when expired sets were last looked for at the cap
        self.folded = 0  # connections counted in an overflow set
        self.expired = 0  # label sets dropped

    def opened(self, record: ConnectionRecord) -> None:
        self._open[id(record)] = _Open(record)

    def closed(self, record: ConnectionRecord) -> None:
        entry = self._open.pop(id(record), None) or _Open(record)
        self._settle(entry, closing=True).counts[1] += 1

    def _settle(self, entry: _Open, closing: bool = False) -> _LabelSet:
        """Count *entry* as opened (the first time) and the bytes it moved since last time."""
        found = entry.set
        changed = closing
        if found is None:
            found = entry.set = self._set_of(self.resolve(entry.record))
            found.counts[0] += 1
            changed = True
        record = entry.record
        sent, received = record.bytes_received, record.bytes_sent
        if sent != entry.sent or received != entry.received:
            found.counts[2] += sent - entry.sent
            found.counts[3] += received - entry.received
            entry.sent, entry.received = sent, received
            changed = True
        if changed:
            found.touched = self.clock()
        return found

    def _set_of(self, labels: Edge) -> _LabelSet:
        found = self._sets.get(labels)
        if found is not None:
            return found
        now = self.clock()
        if self._capped >= self.max_label_sets and now - self._swept >= CAP_SWEEP_INTERVAL:
            self._swept = now
            self._expire(now)
        if self._capped >= self.max_label_sets:
            self.folded += 1
            labels = overflow(labels)
            found = self._sets.get(labels)
            if found is None:
                found = self._sets[labels] = _LabelSet(False, now)
            return found
        self._capped += 1
        found = self._sets[labels] = _LabelSet(True, now)
        return found

    def _expire(self, now: float) -> None:
        """Drop the sets with no open connection that have counted nothing for the expiry."""
        if self.expiry <= 0:
            return
        for labels, found in list(self._sets.items()):
            # opened == closed: no open connection holds this set (see _settle)
            if found.counts[0] == found.counts[1] and now - found.touched >= self.expiry:
                del self._sets[labels]
                self.expired += 1
                self._capped -= found.capped

    def _bring_up_to_date(self) -> tuple[int, int, int]:
        """Before a scrape: open connections' bytes so far, and expired sets dropped; the
        three single figures (folded connections, label sets, expired sets)."""
        for entry in self._open.values():
            self._settle(entry)
        self._expire(self.clock())
        return self.folded, len(self._sets), self.expired

    def exposition(self) -> str:
        """The families in Prometheus' text format, as ``generate_latest`` writes them."""
        totals = self._bring_up_to_date()
        for labels, found in self._sets.items():
            if not found.text:
                found.text = label_text(labels)
        out: list[str] = []
        for index, (header, sample) in enumerate(HEADERS[:4]):
            out.append(header)
            out += [
                f"{sample}{found.text} {_number(found.counts[index])}\n"
                for found in self._sets.values()
            ]
        for (header, sample), value in zip(HEADERS[4:], totals, strict=True):
            out.append(f"{header}{sample} {_number(value)}\n")
        return "".join(out)

    def collect(self) -> Iterator[Metric]:
        totals = self._bring_up_to_date()
        families = _families()
        for labels, found in self._sets.items():
            for family, value in zip(families[:4], found.counts, strict=True):
                family.add_metric(labels, value)
        for family, value in zip(families[4:], totals, strict=True):
            family.add_metric([], value)
        yield from families

    def describe(self) -> Iterator[Metric]:
        return iter(_families())


def label_text(labels: Edge) -> str:
    """``{name="value",...}`` of a label set, names sorted and values escaped as in the
    text format."""
    pairs = sorted(zip(EDGE_LABELS, labels, strict=True))
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in pairs) + "}"


def _escape(value: str) -> str:
    """A label value in the text format: backslash, newline and double quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: int) -> str:
    """A count as the text format writes it (``floatToGoString``), the common case fast."""
    return f"{value}.0" if 0 <= value < 1_000_000 else _go_float(value)


def _unresolved(record: ConnectionRecord) -> Edge:
    """Labels without the agent's registry: this pod's identity and nothing else known."""
    local = Party(record.pod or UNKNOWN, UNKNOWN, record.identity or UNKNOWN)
    return edge(record, local, Party(principal=record.peer_identity or UNKNOWN))


def _families() -> tuple[CounterMetricFamily | GaugeMetricFamily, ...]:
    labels = list(EDGE_LABELS)
    return (
        CounterMetricFamily(
            "smesh_tcp_connections_opened",
            "Connections opened, per edge (Istio's istio_tcp_connections_opened_total); a "
            "tunnelled one is counted by both sides' agents, under reporter source and "
            "destination.",
            labels=labels,
        ),
        CounterMetricFamily(
            "smesh_tcp_connections_closed",
            "Connections closed, per edge (istio_tcp_connections_closed_total); how they "
            "ended: smesh_connections_closed_total{direction,result}.",
            labels=labels,
        ),
        CounterMetricFamily(
            "smesh_tcp_sent_bytes",
            "Bytes from the destination app to the source app (the response; "
            "istio_tcp_sent_bytes_total), counted at each scrape and at close.",
            labels=labels,
        ),
        CounterMetricFamily(
            "smesh_tcp_received_bytes",
            "Bytes from the source app to the destination app (the request; "
            "istio_tcp_received_bytes_total), counted at each scrape and at close.",
            labels=labels,
        ),
        CounterMetricFamily(
            "smesh_tcp_connections_folded",
            "Connections counted in an overflow label set (workload, namespace and principal "
            "labels 'overflow') because limits.maxMetricLabelSets label sets existed already.",
        ),
        GaugeMetricFamily(
            "smesh_tcp_label_sets",
            "Label sets of the smesh_tcp_* counters now (at most limits.maxMetricLabelSets, "
            "plus the overflow sets).",
        ),
        CounterMetricFamily(
            "smesh_tcp_label_sets_expired",
            "Label sets of the smesh_tcp_* counters dropped because none of their connections "
            "was open and they had counted nothing for limits.metricLabelSetExpiry.",
        ),
    )


class _Empty(Collector):
    def __init__(self, family: Metric) -> None:
        self.family = family

    def collect(self) -> Iterator[Metric]:
        yield self.family


def _headers() -> tuple[tuple[str, str], ...]:
    """Each family's HELP and TYPE lines as generate_latest writes them, and its samples'
    name: made once, by the library itself."""
    found = []
    for family in _families():
        text = generate_latest(_Empty(family)).decode()
        sample = family.name + ("_total" if family.type == "counter" else "")
        found.append((text, sample))
    return tuple(found)


HEADERS = _headers()
