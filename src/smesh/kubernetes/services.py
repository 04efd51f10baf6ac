"""The cluster's Services as the outbound side needs them: ClusterIP:port → endpoints (sans-IO).

A captured connect happens before any NAT, so an app that dials a Service's ClusterIP gives
the agent the ClusterIP as the original destination. :class:`ServiceTable` answers "which
Service port is this, and which endpoints serve it", built from Service and EndpointSlice
objects as kube-proxy builds its rules:

- Only Services with a ClusterIP are held: headless Services (``clusterIP: None``) resolve
  to pod addresses in DNS, and ExternalName Services to a name; neither has an address to
  capture. Only TCP ports: capture takes TCP connects only (DNS over UDP is never captured).
- Endpoints come from the EndpointSlices labelled ``kubernetes.io/service-name``; the slices
  of one Service are merged. A Service port's endpoints are those of the slices that list a
  port of the same name (and protocol), and the endpoint's target port is that slice port's
  number: this is how Kubernetes resolves a named ``targetPort`` (per pod, which is why one
  Service may have several slices with different numbers for one port).
- An endpoint's conditions decide whether it is used: ``ready`` ones; if there are none,
  ``serving`` ones that are terminating (kube-proxy's fallback, so connections still go
  somewhere while a whole Deployment rolls); never others.

The whole cluster's endpoints live in every agent, so the table is compact and cheap to
update: it keeps a small frozen record per Service and per slice (not the API objects), an
index ``(ClusterIP, port) → Service port``, and the merged endpoint list of a Service port
only once asked for, cached until one of that Service's objects changes. One event costs
work proportional to that one Service, never to the cluster.

:class:`Picker` chooses among a Service port's endpoints: round robin over the usable ones,
ClientIP session affinity with its timeout. It holds one counter per Service port in use and
one entry per (client address, Service port) with affinity, dropped when they expire.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smesh.validation import IPAddress

if TYPE_CHECKING:  # the table itself needs no lightkube: the data plane imports it
    from lightkube.resources.core_v1 import Service
    from lightkube.resources.discovery_v1 import EndpointSlice

#: The label the EndpointSlice controller puts on the slices of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: kube-proxy's default for ClientIP affinity without a timeout (sessionAffinityConfig).
DEFAULT_AFFINITY_TIMEOUT = 10800.0

ServiceKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One TCP port of a Service (what a ClusterIP:port resolves to)."""

    service: ServiceKey
    name: str  # "" for the single unnamed port
    port: int
    target_port: int | str  # what the Service asks for; the slices say what it is per pod

    @property
    def label(self) -> str:
        """``namespace/name:port`` for logs and the access log."""
        return f"{self.service[0]}/{self.service[1]}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What the agent keeps of a Service with a ClusterIP."""

    key: ServiceKey
    cluster_ips: tuple[IPAddress, ...]
    ports: tuple[ServicePort, ...]
    affinity_timeout: float | None  # None: no session affinity


@dataclass(frozen=True, slots=True)
class SliceEndpoint:
    """One endpoint of a slice: its address, conditions and the pod it stands for.

    The address is the endpoint's first, as kube-proxy takes it (the API: an endpoint's
    addresses are fungible, a client may use the first only), and is kept as the validated
    text the decoded slice holds already: a shared reference instead of an address object
    and a tuple per endpoint (more than half of what the table held per endpoint), parsed
    when a Service port's endpoints are first asked for.
    """

    address: str
    ready: bool
    serving: bool
    terminating: bool
    pod: str  # "namespace/name" of targetRef (kind Pod), "" if none


@dataclass(frozen=True, slots=True)
class SliceInfo:
    """What the agent keeps of an EndpointSlice."""

    service: ServiceKey
    ports: tuple[tuple[str, int], ...]  # (name, port) of its TCP ports
    endpoints: tuple[SliceEndpoint, ...]


@dataclass(frozen=True, slots=True)
class Backend:
    """One endpoint of one Service port: where a connection to it goes."""

    ip: IPAddress
    port: int  # the resolved target port
    pod: str
    ready: bool
    serving: bool
    terminating: bool

    @property
    def address(self) -> str:
        host = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{host}:{self.port}"


# -- from API objects (pure) ------------------------------------------------------------------


def _ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


_FAMILIES = {"IPv4": socket.AF_INET, "IPv6": socket.AF_INET6}


def _address_of(texts: Iterable[str], family: int) -> str | None:
    """The first of *texts* that is an address of *family*. ``inet_pton`` rather than
    :mod:`ipaddress`: every endpoint of every slice update is checked, and parsing each
    into an address object was half of an update's CPU (the table parses a Service's
    addresses only when a connect asks for its endpoints)."""
    for text in texts:
        try:
            socket.inet_pton(family, text)
        except (OSError, TypeError, ValueError):
            continue
        return text
    return None


def service_info(svc: Service) -> ServiceInfo | None:
    """The Service as the table holds it; None for one that takes no captured connect
    (headless, ExternalName, no TCP port, no valid ClusterIP)."""
    meta, spec = svc.metadata, svc.spec
    if meta is None or spec is None or not meta.name:
        return None
    if spec.type == "ExternalName":
        return None
    texts = list(spec.clusterIPs or ()) or ([spec.clusterIP] if spec.clusterIP else [])
    ips = tuple(ip for ip in (_ip(t) for t in texts if t != "None") if ip is not None)
    if not ips:
        return None
    key = (meta.namespace or "default", meta.name)
    ports = tuple(
        ServicePort(
            key,
            p.name or "",
            p.port,
            p.targetPort if p.targetPort not in (None, "", 0) else p.port,
        )
        for p in spec.ports or ()
        if (p.protocol or "TCP") == "TCP"
    )
    if not ports:
        return None
    timeout: float | None = None
    if spec.sessionAffinity == "ClientIP":
        timeout = DEFAULT_AFFINITY_TIMEOUT
        config = spec.sessionAffinityConfig
        if config is not None and config.clientIP is not None and config.clientIP.timeoutSeconds:
            timeout = float(config.clientIP.timeoutSeconds)
    return ServiceInfo(key, ips, ports, timeout)


def slice_info(es: EndpointSlice) -> SliceInfo | None:
    """The slice as the table holds it; None for one of no Service, or of FQDN addresses."""
    meta = es.metadata
    if meta is None or not meta.name:
        return None
    service = (meta.labels or {}).get(SERVICE_NAME_LABEL)
    if not service or es.addressType not in ("IPv4", "IPv6"):
        return None
    ports = tuple(
        (p.name or "", p.port)
        for p in es.ports or ()
        if p.port is not None and (p.protocol or "TCP") == "TCP"
    )
    family = _FAMILIES[es.addressType]
    endpoints: list[SliceEndpoint] = []
    for ep in es.endpoints or ():
        address = _address_of(ep.addresses or (), family)
        if address is None:
            continue
        cond = ep.conditions
        # The API's rules for absent conditions: ready and serving unknown → true,
        # terminating unknown → false.
        ready = cond is None or cond.ready is None or bool(cond.ready)
        serving = ready if cond is None or cond.serving is None else bool(cond.serving)
        terminating = cond is not None and bool(cond.terminating)
        ref = ep.targetRef
        pod = ""
        if ref is not None and ref.kind == "Pod" and ref.name:
            pod = f"{ref.namespace or meta.namespace or 'default'}/{ref.name}"
        endpoints.append(SliceEndpoint(address, ready, serving, terminating, pod))
    return SliceInfo((meta.namespace or "default", service), ports, tuple(endpoints))


_SERVICE_SPEC_KEPT = (
    "type",
    "clusterIP",
    "clusterIPs",
    "ports",
    "sessionAffinity",
    "sessionAffinityConfig",
)


def _lean_meta(raw: dict[str, Any]) -> dict[str, Any]:
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        return raw
    return {**raw, "metadata": {k: v for k, v in meta.items() if k not in _META_DROPPED}}


_META_DROPPED = ("managedFields", "annotations", "ownerReferences", "finalizers")


def lean_service(raw: Any) -> Any:
    """A Service cut down to what :func:`service_info` reads (the informer keeps it)."""
    if not isinstance(raw, dict):
        return raw
    lean = _lean_meta(raw)
    spec = raw.get("spec")
    if isinstance(spec, dict):
        lean["spec"] = {k: spec[k] for k in _SERVICE_SPEC_KEPT if k in spec}
    lean.pop("status", None)
    return lean


def lean_slice(raw: Any) -> Any:
    """An EndpointSlice cut down to what :func:`slice_info` reads: no hints, zones,
    hostnames or node names (an endpoint is mostly those), and of the target reference only
    the kind, name and namespace (not its uid and resourceVersion)."""
    if not isinstance(raw, dict):
        return raw
    lean = _lean_meta(raw)
    endpoints = raw.get("endpoints")
    if isinstance(endpoints, list):
        lean["endpoints"] = [_lean_endpoint(ep) for ep in endpoints if isinstance(ep, dict)]
    return lean


_TARGET_REF_KEPT = ("kind", "name", "namespace")


def _lean_endpoint(ep: dict[str, Any]) -> dict[str, Any]:
    lean: dict[str, Any] = {k: ep[k] for k in ("addresses", "conditions") if k in ep}
    ref = ep.get("targetRef")
    if isinstance(ref, dict):
        lean["targetRef"] = {k: ref[k] for k in _TARGET_REF_KEPT if k in ref}
    return lean


# -- the table ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    info: ServiceInfo | None = None
    slices: dict[str, SliceInfo] = field(default_factory=dict)
    backends: dict[str, tuple[Backend, ...]] = field(default_factory=dict)  # by port name


class ServiceTable:
    """ClusterIP:port → Service port → endpoints, updated one object at a time."""

    def __init__(self) -> None:
        self._services: dict[ServiceKey, _Entry] = {}
        self._by_address: dict[tuple[IPAddress, int], ServicePort] = {}
        self._slice_owner: dict[tuple[str, str], ServiceKey] = {}  # (ns, slice) → service
        self._endpoints = 0

    # -- updates ---------------------------------------------------------------------

    def set_service(self, key: ServiceKey, info: ServiceInfo | None) -> None:
        """The Service *key* is now *info* (None: it takes no captured connect)."""
        entry = self._services.get(key)
        old = entry.info if entry is not None else None
        if old == info:
            return
        if old is not None:
            for ip in old.cluster_ips:
                for port in old.ports:
                    if self._by_address.get((ip, port.port)) is port:
                        del self._by_address[(ip, port.port)]
        if entry is None:
            entry = self._services[key] = _Entry()
        entry.info = info
        entry.backends.clear()
        if info is not None:
            for ip in info.cluster_ips:
                for port in info.ports:
                    self._by_address[(ip, port.port)] = port
        self._drop_if_empty(key, entry)

    def delete_service(self, key: ServiceKey) -> None:
        self.set_service(key, None)

    def set_slice(self, key: tuple[str, str], info: SliceInfo | None) -> None:
        """The EndpointSlice *key* (namespace, name) is now *info* (None: gone or unusable)."""
        owner = self._slice_owner.get(key)
        if owner is not None and (info is None or info.service != owner):
            entry = self._services[owner]
            old = entry.slices.pop(key[1])
            self._endpoints -= len(old.endpoints)
            entry.backends.clear()
            del self._slice_owner[key]
            self._drop_if_empty(owner, entry)
        if info is None:
            return
        target = self._services.get(info.service)
        if target is None:
            target = self._services[info.service] = _Entry()
        self._put_slice(key, info, target)

    def _put_slice(self, key: tuple[str, str], info: SliceInfo, entry: _Entry) -> None:
        previous = entry.slices.get(key[1])
        if previous == info:
            return
        if previous is not None:
            self._endpoints -= len(previous.endpoints)
        entry.slices[key[1]] = info
        self._endpoints += len(info.endpoints)
        self._slice_owner[key] = info.service
        entry.backends.clear()

    def delete_slice(self, key: tuple[str, str]) -> None:
        self.set_slice(key, None)

    def _drop_if_empty(self, key: ServiceKey, entry: _Entry) -> None:
        if entry.info is None and not entry.slices:
            del self._services[key]

    # -- queries ---------------------------------------------------------------------

    def lookup(self, ip: IPAddress, port: int) -> ServicePort | None:
        """The Service port at ClusterIP *ip*:*port*, if any (a dict look-up: every connect)."""
        return self._by_address.get((ip, port))

    def service(self, key: ServiceKey) -> ServiceInfo | None:
        entry = self._services.get(key)
        return entry.info if entry is not None else None

    def backends(self, port: ServicePort) -> tuple[Backend, ...]:
        """Every endpoint of *port*, all conditions, from all the Service's slices."""
        entry = self._services.get(port.service)
        if entry is None:
            return ()
        cached = entry.backends.get(port.name)
        if cached is not None:
            return cached
        found: list[Backend] = []
        seen: set[tuple[IPAddress, int]] = set()
        for name in sorted(entry.slices):  # a stable order, whatever the events' order
            es = entry.slices[name]
            target = next((number for pname, number in es.ports if pname == port.name), None)
            if target is None:
                continue
            for ep in es.endpoints:
                try:
                    ip = ipaddress.ip_address(ep.address)
                except ValueError:  # inet_pton took it, ipaddress does not: not used
                    continue
                if (ip, target) in seen:  # one pod in two slices, while they are moved
                    continue
                seen.add((ip, target))
                found.append(Backend(ip, target, ep.pod, ep.ready, ep.serving, ep.terminating))
        backends = entry.backends[port.name] = tuple(found)
        return backends

    def counts(self) -> tuple[int, int]:
        """(Services with a ClusterIP, endpoints in their slices), for the gauge."""
        services = sum(1 for e in self._services.values() if e.info is not None)
        return services, self._endpoints


def usable(backends: Iterable[Backend], version: int) -> list[Backend]:
    """The endpoints a new connection to a ClusterIP of IP *version* may go to: the ready
    ones, or if none is ready the serving ones (terminating; kube-proxy's fallback)."""
    same = [b for b in backends if b.ip.version == version]
    ready = [b for b in same if b.ready and not b.terminating]
    if ready:
        return ready
    return [b for b in same if b.serving]


class Picker:
    """Which endpoint a new connection goes to: round robin, or the client's affinity.

    Its memory follows use, not the cluster: a round-robin position per Service port
    connected to in the last SWEEP_INTERVAL seconds (a port not seen since starts again at
    a random position, so rare clients of many agents do not all pick the first endpoint),
    and an affinity per (client address, Service port) until its timeout.
    """

    SWEEP_INTERVAL = 60.0

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        start: Callable[[int], int] = random.randrange,
    ) -> None:
        self._clock = clock
        self._start = start
        self._next: dict[ServicePort, int] = {}
        self._used: set[ServicePort] = set()
        self._affinity: dict[tuple[ServicePort, IPAddress], tuple[IPAddress, int, float]] = {}
        self._swept = clock()

    def order(
        self,
        port: ServicePort,
        candidates: list[Backend],
        client: IPAddress | None = None,
        affinity_timeout: float | None = None,
    ) -> list[Backend]:
        """*candidates* in the order to try them: the first is this connection's endpoint,
        the others are for retries. The client's affinity endpoint (if still a candidate)
        comes first and is renewed; otherwise the next in turn, which becomes its affinity.
        """
        if not candidates:
            return []
        now = self._clock()
        if now - self._swept >= self.SWEEP_INTERVAL:
            self._sweep(now)
        self._used.add(port)
        if affinity_timeout is not None and client is not None:
            held = self._affinity.get((port, client))
            if held is not None and held[2] > now:
                for i, b in enumerate(candidates):
                    if (b.ip, b.port) == held[:2]:
                        self._affinity[(port, client)] = (b.ip, b.port, now + affinity_timeout)
                        return candidates[i:] + candidates[:i]
        turn = self._next.get(port)
        start = (self._start(len(candidates)) if turn is None else turn) % len(candidates)
        self._next[port] = start + 1
        ordered = candidates[start:] + candidates[:start]
        if affinity_timeout is not None and client is not None:
            first = ordered[0]
            self._affinity[(port, client)] = (first.ip, first.port, now + affinity_timeout)
        return ordered

    def _sweep(self, now: float) -> None:
        """Drop expired affinities and the positions of ports not used since the last sweep
        (deleted or changed Services leave theirs behind)."""
        self._swept = now
        self._next = {p: n for p, n in self._next.items() if p in self._used}
        self._used = set()
        self._affinity = {k: v for k, v in self._affinity.items() if v[2] > now}

    def __len__(self) -> int:
        return len(self._affinity)
