"""The agent's Prometheus metrics, in one registry per agent.

Labels are bounded by design: direction, result, side, rule name, workload pairs (capped:
smesh.agent.traffic) — never anything per connection.
"""

from __future__ import annotations

import platform
import ssl
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from smesh import __version__
from smesh.agent.traffic import EdgeCounters
from smesh.dataplane.peers import REASONS

# A `_created` series beside every counter and histogram doubles what Prometheus stores
# and no dashboard reads it: a counter's reset shows in the counter itself.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


_GC_BUCKETS = (0.0001, 0.00025, *_LATENCY_BUCKETS[:-4])
# A round trip through two agents is 0.1 to 0.3 ms: a lag of 50 µs is already visible in it.
_LOOP_LAG_BUCKETS = (0.00005, 0.0001, 0.00025, *_LATENCY_BUCKETS[:-4])

# CNI ADD → reply: meant to be well under 100 ms, bounded by kubernetes.enrolTimeout (≤ 120 s).
_ENROL_BUCKETS = (*_LATENCY_BUCKETS, 30.0, 60.0, 120.0)
HANDOFF_COMMANDS = ("add", "del", "check")
HANDOFF_RESULTS = ("meshed", "not_meshed", "ok", "bad_request", "failed", "timeout")


class InformerCounts(Protocol):
    """What smesh.kubernetes.informer.InformerStats counts (read, never copied)."""

    lists: int
    watches: int
    gone: int
    errors: int


class InformerCollector(Collector):
    """The informers' own counters, exported as they are when scraped."""

    def __init__(self, stats: Callable[[], Mapping[str, InformerCounts]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        families = {
            "lists": CounterMetricFamily(
                "smesh_kubernetes_lists",
                "Complete lists of an informer: the first, and a relist after each 410 Gone.",
                labels=["informer"],
            ),
            "watches": CounterMetricFamily(
                "smesh_kubernetes_watches",
                "Watches an informer started (each resumes from the last resourceVersion).",
                labels=["informer"],
            ),
            "gone": CounterMetricFamily(
                "smesh_kubernetes_watch_gone",
                "Watches answered 410 Gone (the resourceVersion was compacted): each relists.",
                labels=["informer"],
            ),
            "errors": CounterMetricFamily(
                "smesh_kubernetes_api_errors",
                "Failed lists and watches, each retried after a capped backoff.",
                labels=["informer"],
            ),
        }
        for name, stats in sorted(self._stats().items()):
            for field, family in families.items():
                family.add_metric([name], getattr(stats, field))
        yield from families.values()

    def describe(self) -> Iterator[Metric]:
        return iter(())


# The reasons of smesh_connections_turned_away_total, per direction (docs/agent.md).
TURNED_AWAY = {
    "outbound": ("at_cap", "accept_failed", "peer_carriers", "peer_streams", "no_certificate"),
    "inbound": (
        "at_cap",
        "accept_failed",
        "handshakes_per_source",
        "handshakes_total",
        "peer_carriers",
        "peer_streams",
        "no_certificate",
    ),
}


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Connections and bytes per edge, Istio's labels (smesh.agent.traffic); the counters
        # by direction alone that were here are their sums, and went. Not in the registry:
        # a scrape writes them itself (EdgeCounters.exposition), after the registry's.
        self.tcp = EdgeCounters()
        self.connections_closed = Counter(
            "smesh_connections_closed_total",
            "Connections finished, by how they ended (per edge: smesh_tcp_connections_closed).",
            ["direction", "result"],
            registry=r,
        )
        self.active_connections = Gauge(
            "smesh_active_connections", "Connections open now.", ["direction"], registry=r
        )
        self.turned_away = Counter(
            "smesh_connections_turned_away_total",
            "Connections a pod's listener could not take: reset at limits.maxConnectionsPerPod "
            "(at_cap); an accept that failed for want of descriptors or memory "
            "(accept_failed; the connection waits in the backlog and is retried); inbound "
            "connections past the handshake budget (handshakes_per_source, handshakes_total); "
            "a peer past its share (peer_carriers, peer_streams); a tunnel connection that "
            "waited timeouts.certificateWait for its pod's certificate in vain "
            "(no_certificate).",
            ["direction", "reason"],
            registry=r,
        )
        for direction, reasons in TURNED_AWAY.items():
            for reason in reasons:
                self.turned_away.labels(direction, reason)  # exported at 0 from the start
        self.peers_refused = Counter(
            "smesh_peers_refused_total",
            "Tunnel peers refused on the inbound side although their certificate chains to a "
            "trusted root: another trust domain (foreign_trust_domain), a source address of no "
            "meshed pod (unknown_address), or of a pod with another identity (identity_mismatch).",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.peers_refused.labels(reason)  # exported at 0 from the start
        self.admin_refused = Counter(
            "smesh_admin_connections_refused_total",
            "Admin connections answered 503 and closed at admin.maxConnections (at_cap) or at "
            "one peer address's share of it (peer_cap), or closed without a complete request "
            "within admin.readTimeout (read_timeout), by listener (scrape, debug).",
            ["listener", "reason"],
            registry=r,
        )
        for listener in ("scrape", "debug"):
            for reason in ("at_cap", "peer_cap", "read_timeout"):
                self.admin_refused.labels(listener, reason)
        self.tls_handshake = Histogram(
            "smesh_tls_handshake_duration_seconds",
            "Duration of mutual TLS handshakes.",
            ["side", "resumed"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tunnel_setup = Histogram(
            "smesh_tunnel_setup_duration_seconds",
            "From accepting a captured connection to the tunnel being established.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.carriers = Gauge(
            "smesh_tunnel_carriers",
            "Pooled mutual-TLS connections open now, each carrying many connections as streams.",
            ["side"],
            registry=r,
        )
        self.window_growth = Gauge(
            "smesh_stream_window_growth_bytes",
            "How far fast streams' receive windows exceed their initial size, all together "
            "(bounded by limits.streamWindowBudgetMiB).",
            registry=r,
        )
        self.unread = Gauge(
            "smesh_unread_bytes",
            "Bytes held for apps that have not read them: what streams keep, plus the kernel "
            "send buffer of each stalled app socket (bounded by limits.unreadBudgetMiB).",
            registry=r,
        )
        self.unread_budget = Gauge(
            "smesh_unread_budget_bytes",
            "The budget for bytes held for apps that do not read: node-wide (scope=node, "
            "limits.unreadBudgetMiB) and for each pod (scope=pod, limits.unreadBudgetPerPodMiB).",
            ["scope"],
            registry=r,
        )
        self.window_shrinks = Counter(
            "smesh_stream_window_shrinks_total",
            "Credit grants that handed back less than the app took, because the budget for "
            "unread bytes was filling.",
            registry=r,
        )
        self.unread_resets = Counter(
            "smesh_unread_budget_resets_total",
            "Streams reset because their app did not read while the budget for unread bytes "
            "was full and they held more than their share of it.",
            registry=r,
        )
        self.policy_denials = Counter(
            "smesh_policy_denials_total",
            "Inbound connections refused by authorization policy.",
            ["rule"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "smesh_policy_reloads_total",
            "Reloads of the policy file (SIGHUP, `smesh lab policy`): loaded, or refused "
            "(the previous policy stays; /debug/policy and `smesh status` say why).",
            ["result"],
            registry=r,
        )
        for label in ("loaded", "refused"):
            self.policy_reloads.labels(label)
        self.policy_loaded = Gauge(
            "smesh_policy_loaded_timestamp_seconds",
            "When the authorization policy in force was loaded (Unix time).",
            registry=r,
        )
        self.capture_events = Counter(
            "smesh_capture_events_total",
            "Connects seen by the capture programs, by workload (its owner's name, else the "
            "pod's), the workload's namespace and decision.",
            ["workload", "namespace", "decision"],
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "smesh_certificate_expiry_timestamp_seconds",
            "When the current certificate of each identity (principal: its SPIFFE ID, as "
            "source_principal of smesh_tcp_*) expires (Unix time).",
            ["principal"],
            registry=r,
        )
        self.credential_cache_loads = Counter(
            "smesh_credential_cache_loads_total",
            "Cached certificates looked up because the signer did not answer, by outcome: "
            "used, missing, or refused (expired, untrusted, wrong_identity, unreadable).",
            ["result"],
            registry=r,
        )
        self.handovers = Counter(
            "smesh_handovers_total",
            "Agent hand-overs (docs/agent.md): taken (this agent took the node over), "
            "failed (a new agent's attempt failed before its ack; this one serves on), "
            "refused (a caller that is neither root nor the agent's user).",
            ["result"],
            registry=r,
        )
        for result in ("taken", "failed", "refused"):
            self.handovers.labels(result)
        self.csr_requests = Counter(
            "smesh_csr_requests_total",
            "Certificate requests filed through the Kubernetes CSR API (identity.source: "
            "kubernetes), by answer: issued, denied, failed, timeout (identity.csrTimeout), error.",
            ["result"],
            registry=r,
        )
        self.rotation_renewals = Counter(
            "smesh_certificate_rotation_renewals_total",
            "Certificates renewed early because the trust bundle names another signing root "
            "than theirs (a CA rotation was activated; identity.rotationSpread).",
            registry=r,
        )
        self.workloads = Gauge(
            "smesh_workloads", "Meshed workloads on this node, by state.", ["state"], registry=r
        )
        self.ready = Gauge(
            "smesh_agent_ready",
            "1 while /ready answers 200 (every meshed pod of the node served), else 0.",
            registry=r,
        )
        self.service_routes = Counter(
            "smesh_service_routes_total",
            "Captured connects to a Service's ClusterIP, by route: tunnel (to a meshed "
            "endpoint), endpoint (straight to a non-meshed one), passthrough (to the ClusterIP: "
            "no meshed endpoint), deny, no_endpoints (reset: none ready), retried (one more "
            "endpoint tried after one failed; limits.serviceEndpointAttempts).",
            ["result"],
            registry=r,
        )
        for label in ("tunnel", "endpoint", "passthrough", "deny", "no_endpoints", "retried"):
            self.service_routes.labels(label)
        self.service_table = Gauge(
            "smesh_service_table",
            "What the agent holds of the cluster's Services: services (with a ClusterIP) "
            "and endpoints (in their EndpointSlices).",
            ["kind"],
            registry=r,
        )
        self.build_info = Gauge(
            "smesh_build_info",
            "Agent build information (always 1).",
            ["version", "python", "openssl"],
            registry=r,
        )
        self.build_info.labels(__version__, platform.python_version(), ssl.OPENSSL_VERSION).set(1)
        self.gc_pause = Histogram(
            "smesh_agent_gc_pause_seconds",
            "Python garbage collections by generation, timed: each one stops the event loop "
            "(smesh.agent.collector).",
            ["generation"],
            buckets=_GC_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "smesh_agent_event_loop_lag_seconds",
            "How long the event loop kept a callback that was ready waiting, sampled every "
            "loopLagInterval (smesh.agent.looplag): every relayed byte waits as long.",
            buckets=_LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.gc_frozen = Gauge(
            "smesh_agent_gc_frozen_objects",
            "Objects moved out of the collector's way once the agent had started (gc.freeze).",
            registry=r,
        )

    def observe(self, generation: int, seconds: float) -> None:
        """A garbage collection of *generation* took *seconds* (collector.PauseObserver)."""
        self.gc_pause.labels(str(generation)).observe(seconds)

    def kubernetes(self, informers: Callable[[], Mapping[str, InformerCounts]]) -> None:
        """The Kubernetes source's metrics: its informers and the CNI hand-off."""
        self.registry.register(InformerCollector(informers))
        self.handoff_requests = Counter(
            "smesh_cni_requests_total",
            "CNI hand-off requests by command (add, del, check) and result: meshed or "
            "not_meshed (add), ok, bad_request (400), failed (5xx: the pod must not start), "
            "timeout (kubernetes.enrolTimeout passed).",
            ["command", "result"],
            registry=self.registry,
        )
        for command in HANDOFF_COMMANDS:
            for result in HANDOFF_RESULTS:
                self.handoff_requests.labels(command, result)
        self.enrol_duration = Histogram(
            "smesh_cni_enrol_duration_seconds",
            "From a CNI ADD received to its reply (the pod meshed, not meshed, or refused).",
            ["result"],
            buckets=_ENROL_BUCKETS,
            registry=self.registry,
        )

    def authorization_policies(self) -> None:
        """The AuthorizationPolicy watcher's metrics (smesh.kubernetes.policies)."""
        self.policy_objects = Gauge(
            "smesh_authorization_policies",
            "AuthorizationPolicy objects this agent has in force (applied) or could not use "
            "(refused: their status says why).",
            ["state"],
            registry=self.registry,
        )
        self.policy_status_writes = Counter(
            "smesh_policy_status_writes_total",
            "This agent's writes of its entry in AuthorizationPolicy status, by result (a "
            "failed write is retried after a capped backoff).",
            ["result"],
            registry=self.registry,
        )
        for label in ("applied", "refused"):
            self.policy_objects.labels(label)
        for label in ("ok", "failed"):
            self.policy_status_writes.labels(label)

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.tcp.exposition().encode()

    def collect(self) -> Iterator[Metric]:
        """Every family a scrape has, as prometheus_client's objects (for tests and tools;
        a scrape is render())."""
        yield from self.registry.collect()
        yield from self.tcp.collect()
