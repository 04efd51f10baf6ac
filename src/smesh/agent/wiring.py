"""The agent's concrete pod wiring: certificates, listeners, routes and policy.

This is where identity, policy, capture and the data plane meet; each of them stays
ignorant of the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from smesh.agent import logs
from smesh.agent.config import AgentConfig
from smesh.agent.flowlog import FlowObserver
from smesh.agent.handover import address
from smesh.agent.metrics import AgentMetrics
from smesh.agent.pods import PodListeners
from smesh.agent.traffic import EdgeResolver
from smesh.agent.workloads import DirectorySource, Snapshot, Workload, WorkloadSource
from smesh.capture import original_destination
from smesh.dataplane.budget import Throttle
from smesh.dataplane.context import IPAddress, Limits, PodConfig, Route, Services, Target
from smesh.dataplane.endpoint import PodEndpoint
from smesh.dataplane.peers import PeerGate, PeerRefusal
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Scratch
from smesh.errors import SmeshError
from smesh.identity.ca import CertificateAuthority
from smesh.identity.cache import CredentialCache
from smesh.identity.credential import Credential
from smesh.identity.manager import CertificateManager
from smesh.identity.service import SignerClient
from smesh.identity.signer import CertificateSource, LiveEntitlements, LocalSigner
from smesh.identity.spiffe import SpiffeId
from smesh.kubernetes.services import Picker, ServiceTable, usable
from smesh.linux.netns import Namespace, NamespaceHandles, single_link
from smesh.policy import Decision, DestinationWorkload, PolicyStore, trace
from smesh.tunnel.window import GrowthBudget, HeldBudget

if TYPE_CHECKING:
    from smesh.agent.node import Agent

log = logging.getLogger("smesh.agent")
access_log = logging.getLogger(logs.ACCESS_LOGGER)


class ListenError(SmeshError):
    """A pod's listener could not be opened inside its namespace."""


class MetricsObserver:
    """Connection events → Prometheus metrics and one access-log line per connection."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self.m = metrics

    def opened(self, record: ConnectionRecord) -> None:
        self.m.tcp.opened(record)
        self.m.active_connections.labels(record.direction).inc()

    def closed(self, record: ConnectionRecord) -> None:
        self.m.tcp.closed(record)
        self.m.connections_closed.labels(record.direction, record.result).inc()
        self.m.active_connections.labels(record.direction).dec()
        access_log.info("connection", extra=logs.fields(**record.as_dict()))

    def handshake(self, side: str, seconds: float, resumed: bool) -> None:
        self.m.tls_handshake.labels(side, "true" if resumed else "false").observe(seconds)

    def tunnel_ready(self, seconds: float) -> None:
        self.m.tunnel_setup.observe(seconds)

    def carriers(self, side: str, delta: int) -> None:
        self.m.carriers.labels(side).inc(delta)

    def turned_away(self, direction: str, reason: str) -> None:
        self.m.turned_away.labels(direction, reason).inc()


def binding_refusal(
    peer: SpiffeId, address: IPAddress, workload: Workload | None, trust_domain: str
) -> PeerRefusal | None:
    """Why *peer* may not speak from *address*, where the registry has *workload*; or None.

    A peer of this trust domain must come from an address of a meshed pod whose identity it
    proves. A federated peer (another trust domain, listed) is no workload of this cluster:
    it may come from any address but this cluster's pods', and its certificate's expiry is
    all that bounds it.
    """
    if peer.trust_domain != trust_domain:
        if workload is None:
            return None
        return PeerRefusal(
            "identity_mismatch",
            f"{address} is pod {workload.key} of this cluster, not a peer of trust domain "
            f"{peer.trust_domain!r}",
        )
    if workload is None:
        return PeerRefusal("unknown_address", f"{address} is the address of no known pod")
    if not workload.meshed:
        return PeerRefusal("unknown_address", f"{address} is pod {workload.key}, not meshed")
    if peer.namespace == workload.namespace and peer.service_account == workload.service_account:
        return None  # (checked per stream: no SpiffeId is built, its validation costs µs)
    expected = SpiffeId(trust_domain, workload.namespace, workload.service_account)
    return PeerRefusal(
        "identity_mismatch", f"{address} is pod {workload.key}, whose identity is {expected}"
    )


def workload_source(config: AgentConfig, metrics: AgentMetrics) -> WorkloadSource:
    """The lab's directory of pod files, or the Kubernetes API with the CNI hand-off."""
    if config.kubernetes is not None:
        from smesh.kubernetes.source import KubernetesSource  # noqa: PLC0415 - lightkube

        return KubernetesSource.from_config(config, metrics)
    assert config.workloads is not None  # the configuration has exactly one source
    return DirectorySource(config.workloads)


def certificate_source(config: AgentConfig, agent: Agent) -> CertificateSource:
    """The signing service if configured, else a CA directory in this process."""
    ident = config.identity
    if ident.source == "kubernetes":
        from smesh.identity.kubecsr import KubeCsrSource  # noqa: PLC0415 - lightkube

        assert config.kubernetes is not None  # the configuration checks it
        answered = agent.metrics.csr_requests
        return KubeCsrSource(
            config.node,
            ident.cert_lifetime,
            kubeconfig=config.kubernetes.kubeconfig,
            timeout=ident.csr_timeout,
            on_answer=lambda result: answered.labels(result).inc(),
        )
    if ident.signer_socket is not None:
        if ident.node_credential_dir is None:
            raise SmeshError("identity.nodeCredentialDir is required with identity.signerSocket")
        return SignerClient.from_directory(ident.signer_socket, ident.node_credential_dir)
    if ident.ca_dir is not None:
        ca = CertificateAuthority.load(ident.ca_dir)
        if ca.trust_domain != ident.trust_domain:  # every pod would be "not entitled"
            raise SmeshError(
                f"identity.trustDomain {ident.trust_domain!r} is not the trust domain of the "
                f"CA in {ident.ca_dir} ({ca.trust_domain!r})"
            )

        def pairs() -> list[tuple[str, SpiffeId]]:
            return [
                (w.node, SpiffeId(ca.trust_domain, w.namespace, w.service_account))
                for w in agent.registry.workloads()
            ]

        return LocalSigner(ca, LiveEntitlements(pairs), ident.cert_lifetime).for_node(config.node)
    raise SmeshError("configure identity.signerSocket (with nodeCredentialDir) or identity.caDir")


def _policy_pending(config: AgentConfig) -> str | None:
    """Why policy decisions wait at start: AuthorizationPolicies are to be read first."""
    k8s = config.kubernetes
    if k8s is None or not k8s.authorization_policies:
        return None
    from smesh.kubernetes.policies import PENDING  # noqa: PLC0415 - lightkube

    return PENDING


class MeshWiring:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.policy = PolicyStore(config.policy, pending=_policy_pending(config))
        self._policies: asyncio.Task[None] | None = None
        self.certs: CertificateManager | None = None
        self.services: Services | None = None
        self._agent: Agent | None = None
        self._renewals: asyncio.Task[None] | None = None
        self._namespaces = NamespaceHandles()
        self._services: ServiceTable | None = None  # the Kubernetes source's, if any
        self._picker = Picker()
        self._no_endpoint_log = Throttle(5.0)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, agent: Agent) -> None:
        self._agent = agent
        source = certificate_source(self.config, agent)
        cache = CredentialCache(self.config.credential_cache_dir)
        cache.ensure()  # a path it cannot use stops the agent now, not at the next restart
        bootstrap = None
        if isinstance(source, SignerClient) and self.config.identity.node_credential_dir:
            bootstrap = self.config.identity.node_credential_dir / "bundle.pem"
        bundle = cache.bundle(unless_older_than=bootstrap)  # the signer's last word...
        if bundle is None and isinstance(source, SignerClient):
            bundle = source.known_bundle  # ...or the node's bootstrap bundle, if newer
        loads = agent.metrics.credential_cache_loads
        self.certs = CertificateManager(
            source,
            bundle,
            on_renewed=self._renewed,
            cache=cache,
            on_cache_load=lambda result: loads.labels(result).inc(),
            rotation_spread=self.config.identity.rotation_spread,
            on_rotation=lambda _identity: agent.metrics.rotation_renewals.inc(),
        )
        t, lim = self.config.timeouts, self.config.limits
        table = getattr(agent.source, "services", None)
        self._services = table if isinstance(table, ServiceTable) else None
        if self._services is not None:
            held = self._services
            agent.metrics.service_table.labels("services").set_function(lambda: held.counts()[0])
            agent.metrics.service_table.labels("endpoints").set_function(lambda: held.counts()[1])
        agent.metrics.tcp.resolve = EdgeResolver(agent.registry, self._local, self.identity_of)
        agent.metrics.tcp.max_label_sets = lim.max_metric_label_sets
        agent.metrics.tcp.expiry = lim.metric_label_set_expiry
        self.services = Services(
            tls=self,
            route=self._route,
            service_route=self._service_route,
            service_retried=agent.metrics.service_routes.labels("retried").inc,
            authorize=self._authorize,
            original_destination=original_destination,
            observer=FlowObserver(MetricsObserver(agent.metrics), agent.flows),
            limits=Limits(
                handshake_timeout=t.tls_handshake,
                connect_timeout=t.connect,
                request_timeout=t.request,
                idle_timeout=t.idle,
                max_connections=lim.max_connections_per_pod,
                inbound_handshake_timeout=t.inbound_handshake,
                max_handshakes_per_source=lim.max_handshakes_per_source,
                max_handshakes=lim.max_handshakes_per_pod,
                max_carriers_per_peer=lim.max_carriers_per_peer,
                max_streams_per_peer=lim.max_streams_per_peer,
                certificate_wait=t.certificate_wait,
            ),
            windows=GrowthBudget(
                lim.stream_window_budget_mib * 1024 * 1024,
                held=HeldBudget(
                    lim.unread_budget_mib * 1024 * 1024,
                    lim.unread_budget_per_pod_mib * 1024 * 1024,
                    on_shrink=agent.metrics.window_shrinks.inc,
                    on_reset=agent.metrics.unread_resets.inc,
                ),
            ),
            scratch=Scratch(
                app_send_buffer=lim.app_send_buffer_kib * 1024,
                app_receive_buffer=lim.app_receive_buffer_kib * 1024,
            ),
            peers=PeerGate(
                federated=frozenset(self.config.identity.federated_trust_domains),
                binding=self._binding,
                settle=t.registry_lag,
                refused=lambda reason: agent.metrics.peers_refused.labels(reason).inc(),
            ),
        )
        windows = self.services.windows
        agent.metrics.window_growth.set_function(lambda: windows.in_use)
        agent.metrics.unread.set_function(lambda: windows.held.held)
        agent.metrics.unread_budget.labels("node").set(windows.held.limit)
        agent.metrics.unread_budget.labels("pod").set(windows.held.pod_limit)
        reloads = agent.metrics.policy_reloads
        self.policy.on_reload = lambda loaded: reloads.labels(
            "loaded" if loaded else "refused"
        ).inc()
        store = self.policy
        agent.metrics.policy_loaded.set_function(lambda: store.loaded_at)
        self._renewals = asyncio.create_task(self._upkeep(source), name="renewals")
        agent.depends_on(self._renewals)
        if self.policy.pending is not None:
            from smesh.kubernetes.policies import PolicyWatcher  # noqa: PLC0415 - lightkube

            watcher = PolicyWatcher.from_config(self.config, self.policy, agent.metrics)
            self._policies = asyncio.create_task(watcher.run(), name="authorization policies")
            agent.depends_on(self._policies)

    async def _upkeep(self, source: CertificateSource) -> None:
        """Renewals, and the trust bundle's changes where the source can follow them."""
        assert self.certs is not None
        follow = getattr(source, "follow_bundle", None)  # KubeCsrSource: a ConfigMap watch
        async with asyncio.TaskGroup() as group:
            group.create_task(self.certs.run())
            if follow is not None:
                group.create_task(follow(self.certs.refresh_bundle))

    async def stop(self) -> None:
        for task in (self._renewals, self._policies):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._namespaces.close()

    def reload(self) -> None:
        self.policy.reload()

    def describe_policy(self) -> dict[str, Any]:
        """The agent's ``/debug/policy``: the policy in force (its document, whose digest
        the CLI checks before explaining with it), and the trust domain that completes a
        ``namespace/serviceaccount`` source."""
        return {
            "trust_domain": self.config.identity.trust_domain,
            **self.policy.describe(),
        }

    def workloads_changed(self, snapshot: Snapshot) -> None:
        # Routes read the agent's registry on every connection; the inbound side's
        # accepted peers are checked against it again now.
        if self.services is not None:
            self.services.peers.changed()

    def forget_others(self, keep: list[Workload]) -> None:
        """Drop cached credentials of pods that left the mesh while no agent ran."""
        assert self.certs is not None
        for gone in self.certs.forget_cached_except({self.identity_of(w) for w in keep}):
            log.info("removed the cached credential of %s: no meshed pod uses it", gone)

    def _local(self, name: str, identity: str) -> Workload | None:
        """The workload of this node's pod *name* whose identity is *identity* (metrics).

        A pod's identity is in its own namespace: ``spiffe://TD/ns/NAMESPACE/sa/ACCOUNT``.
        """
        assert self._agent is not None
        parts = identity.split("/")
        if len(parts) != 7 or parts[3] != "ns":
            return None
        pod = self._agent.pods.get(f"{parts[4]}/{name}")
        return pod.workload if pod is not None else None

    # -- identity ------------------------------------------------------------------------

    def identity_of(self, workload: Workload) -> SpiffeId:
        return SpiffeId(
            self.config.identity.trust_domain, workload.namespace, workload.service_account
        )

    async def issue(self, workload: Workload) -> float:
        assert self.certs is not None
        assert self._agent is not None
        credential = await self.certs.acquire(self.identity_of(workload))
        self._renewed(self.identity_of(workload), credential)
        return credential.not_after.timestamp()

    def release(self, workload: Workload) -> None:
        if self.certs is not None:
            self.certs.release(self.identity_of(workload))
        if self._agent is not None and workload.key in self._agent.pods:
            return  # a runtime replacing this one dials through the namespace handle
        self._namespaces.release(workload.key)  # held, it would keep a gone pod's alive

    def _renewed(self, identity: SpiffeId, credential: Credential) -> None:
        if self._agent is not None:
            self._agent.metrics.certificate_expiry.labels(str(identity)).set(
                credential.not_after.timestamp()
            )

    # TlsProvider for the data plane
    def client_context(self, identity: SpiffeId) -> tuple[ssl.SSLContext, int]:
        assert self.certs is not None
        return self.certs.client_context(identity), self.certs.generation(identity)

    def server_context(self, identity: SpiffeId) -> ssl.SSLContext:
        assert self.certs is not None
        return self.certs.server_context(identity)

    def has_certificate(self, identity: SpiffeId) -> bool:
        assert self.certs is not None
        return self.certs.has(identity)

    async def wait_certificate(self, identity: SpiffeId, timeout: float) -> None:
        assert self.certs is not None
        await self.certs.wait_for(identity, timeout)

    # -- routing and policy ----------------------------------------------------------------

    def _route(self, ip: IPAddress, port: int) -> Route:
        assert self._agent is not None
        workload = self._agent.registry.lookup(ip)
        if workload is not None and workload.meshed:
            return Route("tunnel", self.identity_of(workload), workload.name)
        if self.config.non_meshed == "passthrough":
            return Route("passthrough", None, workload.name if workload else "")
        return Route("deny", None, workload.name if workload else "")

    def _service_route(self, ip: IPAddress, port: int, client: PodConfig) -> Route | None:
        """A connect to a Service's ClusterIP:port, or None if *ip*:*port* is none.

        The Service's usable endpoints (docs/kubernetes.md, "Services") in the order the
        picker gives (round robin, or the client pod's ClientIP affinity), as targets: a
        meshed endpoint's pod is tunnelled to with its identity expected; a non-meshed one
        is connected to straight if passthrough is on, skipped if not. A Service without
        a meshed endpoint is the non-meshed rule's: passthrough to the ClusterIP (kube-proxy
        NATs it as it would without smesh) or deny.
        """
        table = self._services
        if table is None:
            return None
        service_port = table.lookup(ip, port)
        if service_port is None:
            return None
        assert self._agent is not None
        counted = self._agent.metrics.service_routes
        label = service_port.label
        candidates = usable(table.backends(service_port), ip.version)
        if not candidates:
            counted.labels("no_endpoints").inc()
            detail = f"service {label} has no ready endpoint"
            if self._no_endpoint_log.ready():
                log.warning("resetting connects to %s: no ready endpoint", label)
            return Route("refuse", service=label, detail=detail)
        info = table.service(service_port.service)
        client_ip = next((a for a in client.addresses if a.version == ip.version), None)
        ordered = self._picker.order(
            service_port, candidates, client_ip, info.affinity_timeout if info else None
        )
        passthrough = self.config.non_meshed == "passthrough"
        attempts = self.config.limits.service_endpoint_attempts
        targets: list[Target] = []
        meshed = False
        for backend in ordered:
            workload = self._agent.registry.lookup(backend.ip)
            if workload is not None and workload.meshed:
                meshed = True
                identity = self.identity_of(workload)
                targets.append(Target(backend.ip, backend.port, identity, workload.name))
            elif passthrough:
                name = workload.name if workload is not None else backend.pod
                targets.append(Target(backend.ip, backend.port, None, name))
            if meshed and len(targets) >= attempts:
                break
        if not meshed:
            if passthrough:
                counted.labels("passthrough").inc()
                return Route("passthrough", service=label)
            counted.labels("deny").inc()
            return Route(
                "deny",
                service=label,
                detail=f"service {label} has no meshed endpoint and nonMeshed is deny",
            )
        first = targets[0]
        counted.labels("tunnel" if first.identity is not None else "endpoint").inc()
        return Route(
            "tunnel" if first.identity is not None else "passthrough",
            first.identity,
            first.workload,
            service=label,
            targets=tuple(targets[:attempts]),
        )

    def _binding(self, peer: SpiffeId, address: IPAddress) -> PeerRefusal | None:
        assert self._agent is not None
        return binding_refusal(
            peer, address, self._agent.registry.lookup(address), self.config.identity.trust_domain
        )

    def _authorize(self, peer: SpiffeId, pod: PodConfig, port: int) -> Decision:
        dest = DestinationWorkload(pod.identity.namespace, pod.identity.service_account, pod.name)
        # pending: fail closed until the objects are read. `smesh policy explain` runs this
        # same trace on the policy /debug/policy serves (describe_policy).
        store = self.policy
        decision = trace(store.policy, peer, dest, port, pending=store.pending).decision
        if not decision.allowed and self._agent is not None:
            self._agent.metrics.policy_denials.labels(decision.decided_by).inc()
        return decision

    # -- listeners -----------------------------------------------------------------------

    async def listen(self, workload: Workload) -> PodListeners:
        assert self.services is not None
        netns, _cgroup = workload.sandbox()
        ns = self._namespaces.of(workload.key, netns)
        ports = self.config.ports
        opened: list[socket.socket] = []
        try:
            outbound = [
                self._listener(workload.key, "outbound", ns, host, ports.outbound, opened=opened)
                for host in ("127.0.0.1", "::1")
            ]
            inbound = [
                self._listener(workload.key, "inbound", ns, str(ip), ports.inbound, opened=opened)
                for ip in workload.ips
            ]
            scope = single_link(ns)  # for IPv6 link-local passthrough
        except (OSError, SmeshError) as exc:
            for sock in opened:
                sock.close()
            raise ListenError(f"cannot listen in {workload.key}'s namespace: {exc}") from None
        pod = PodConfig(
            name=workload.name,
            identity=self.identity_of(workload),
            addresses=workload.ips,
            sockets=ns,
            tunnel_port=ports.inbound,
            forbidden_ports=frozenset({ports.outbound, ports.inbound, *self.config.admin.ports}),
            link_scope=scope,
        )
        endpoint = PodEndpoint(pod, self.services)
        endpoint.start(outbound, inbound)
        return endpoint

    def _listener(
        self,
        pod: str,
        kind: str,
        ns: Namespace,
        host: str,
        port: int,
        *,
        opened: list[socket.socket],
    ) -> socket.socket:
        """The pod's listener at host:port: the one a previous agent passed (a hand-over:
        what is queued on it is served, nothing refused), or a new one in its netns."""
        if self._agent is not None:
            taken = self._agent.take_inherited(pod, kind, address(host, port))
            if taken is not None:
                opened.append(taken)
                return taken
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = ns.socket(family)
        opened.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(4096)
        return sock
