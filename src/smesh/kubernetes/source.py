"""The agent's workload source on a Kubernetes node: the API server plus the CNI hand-off.

Three informers keep the picture: the Pods of this node (field selector on spec.nodeName),
which decide what the agent meshes; the Pods of the whole cluster, the registry of who
answers at an address, meshed or not; and the Namespaces, whose label ``smesh.io/mesh=
enabled`` opts their pods in. The API does not say where a pod's sandbox is: the CNI plugin
hands it over (smesh.kubernetes.sandboxes), and a restarted agent finds it again from its
persisted records or, failing those, from a process in the pod's cgroup.

:func:`workload_of` is the whole mapping from API objects to what the agent meshes, and is
pure; the class around it only gathers its inputs and yields a snapshot when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice
from pydantic import ValidationError

from smesh.agent.config import AgentConfig, KubernetesSettings
from smesh.agent.metrics import AgentMetrics
from smesh.agent.workloads import Snapshot, Workload
from smesh.kubernetes import layout
from smesh.kubernetes.client import NAMESPACES, PODS, Kind, KubeApi, Selection
from smesh.kubernetes.handoff import SandboxRequest
from smesh.kubernetes.informer import Informer, InformerStats
from smesh.kubernetes.sandboxes import (
    POD_LOOKUP_WAIT,
    BadRequest,
    HandoffFailure,
    Outcome,
    RecordStore,
    SandboxRecord,
    SandboxServer,
    wait_until,
)
from smesh.kubernetes.services import (
    ServiceTable,
    SliceInfo,
    lean_service,
    lean_slice,
    service_info,
    slice_info,
)
from smesh.kubernetes.store import Event, EventType, Synced
from smesh.linux import cgroups, netns
from smesh.validation import IPAddress, describe

log = logging.getLogger("smesh.agent")

MESH_LABEL = "smesh.io/mesh"
NAMESPACE_ENABLED = "enabled"
POD_DISABLED = "disabled"
TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


# -- the mapping (sans-IO) -----------------------------------------------------------------

#: The parts of a Pod the agent reads (here, in sandboxes.py and layout.py); the rest of
#: each object is dropped before it is decoded and stored.
_POD_SPEC_KEPT = ("nodeName", "hostNetwork", "serviceAccountName")
_POD_STATUS_KEPT = ("phase", "podIP", "podIPs", "qosClass")


def lean_pod(raw: Any) -> Any:
    """A Pod as the API sent it, cut down to what the agent reads.

    The cluster-wide informer holds every pod of the cluster and decodes every change of
    any of them; ``managedFields``, annotations, container specs and container statuses
    are most of a pod's bytes and of its decoding time, and the agent uses none of them.
    Containers keep their names (the model requires the list).
    """
    if not isinstance(raw, dict):
        return raw  # Kind.decode says what is wrong with it
    lean = dict(raw)
    meta = raw.get("metadata")
    if isinstance(meta, dict):
        lean["metadata"] = {
            k: v for k, v in meta.items() if k not in ("managedFields", "annotations")
        }
    spec = raw.get("spec")
    if isinstance(spec, dict):
        kept = {k: spec[k] for k in _POD_SPEC_KEPT if k in spec}
        containers = spec.get("containers")
        if isinstance(containers, list):
            kept["containers"] = [
                {"name": c.get("name", "")} for c in containers if isinstance(c, dict)
            ]
        lean["spec"] = kept
    status = raw.get("status")
    if isinstance(status, dict):
        lean["status"] = {k: status[k] for k in _POD_STATUS_KEPT if k in status}
    return lean


@dataclass(frozen=True)
class LeanPods(Kind[Pod]):
    """PODS, decoded through :func:`lean_pod`."""

    def decode(self, raw: Any) -> Pod:
        return super().decode(lean_pod(raw))


LEAN_PODS = LeanPods(PODS.model, PODS.group_path, PODS.plural, PODS.namespaced)


@dataclass(frozen=True)
class LeanServices(Kind[Service]):
    """Services, decoded through :func:`~smesh.kubernetes.services.lean_service`."""

    def decode(self, raw: Any) -> Service:
        return super().decode(lean_service(raw))


@dataclass(frozen=True, slots=True)
class HeldSlice:
    """What the agent's informer keeps of an EndpointSlice: the metadata its store reads
    (name, namespace, uid, resourceVersion) and the service table's record of it, which
    the table holds too (one copy). Not the decoded object: with every endpoint of the
    cluster in every agent, the lightkube models were half of the agent's memory per
    endpoint (about 390 bytes, by tracemalloc, beside the table's 210)."""

    metadata: ObjectMeta | None
    info: SliceInfo | None


_SLICES = Kind(EndpointSlice, "/apis/discovery.k8s.io/v1", "endpointslices", namespaced=True)


@dataclass(frozen=True)
class LeanSlices(Kind[HeldSlice]):
    """EndpointSlices, decoded through :func:`~smesh.kubernetes.services.lean_slice` into
    :class:`HeldSlice`: :func:`~smesh.kubernetes.services.slice_info` runs once, here."""

    def decode(self, raw: Any) -> HeldSlice:
        es = _SLICES.decode(lean_slice(raw))
        meta = es.metadata
        kept = None
        if meta is not None:
            kept = ObjectMeta(
                name=meta.name,
                namespace=meta.namespace,
                uid=meta.uid,
                resourceVersion=meta.resourceVersion,
            )
        return HeldSlice(kept, slice_info(es))


LEAN_SERVICES = LeanServices(Service, "/api/v1", "services", namespaced=True)
LEAN_SLICES = LeanSlices(HeldSlice, "/apis/discovery.k8s.io/v1", "endpointslices", True)


def apply_service_event(table: ServiceTable, event: Event[Service]) -> None:
    """One Service change into the table (a DELETED removes it, whatever its last state)."""
    key = event.key
    info = None if event.type == EventType.DELETED else service_info(event.obj)
    table.set_service(key, info)


def apply_slice_event(table: ServiceTable, event: Event[HeldSlice]) -> None:
    """One EndpointSlice change into the table."""
    info = None if event.type == EventType.DELETED else event.obj.info
    table.set_slice(event.key, info)


def not_meshed_because(pod: Pod, namespace: Namespace | None) -> str | None:
    """Why *pod* is not meshed, or None if it is (the rules of docs/kubernetes.md)."""
    ns_labels = (namespace.metadata.labels if namespace and namespace.metadata else None) or {}
    pod_labels = (pod.metadata.labels if pod.metadata else None) or {}
    if ns_labels.get(MESH_LABEL) != NAMESPACE_ENABLED:
        return f"namespace is not labelled {MESH_LABEL}={NAMESPACE_ENABLED}"
    if pod_labels.get(MESH_LABEL) == POD_DISABLED:
        return f"pod is labelled {MESH_LABEL}={POD_DISABLED}"
    if pod.spec is not None and pod.spec.hostNetwork:
        return "pod uses the host network"
    if pod.status is not None and pod.status.phase in TERMINAL_PHASES:
        return f"pod has ended ({pod.status.phase})"
    return None


def pod_ips(pod: Pod) -> tuple[IPAddress, ...]:
    """status.podIPs (or the older status.podIP); addresses that do not parse are skipped."""
    status = pod.status
    if status is None:
        return ()
    texts = [p.ip for p in status.podIPs or () if p.ip] or ([status.podIP] if status.podIP else [])
    ips: list[IPAddress] = []
    for text in texts:
        with contextlib.suppress(ValueError):
            ips.append(ipaddress.ip_address(text))
    return tuple(ips)


#: The label a Deployment's ReplicaSet adds to its name and to its pods (``web-5d4f8c``).
TEMPLATE_HASH = "pod-template-hash"
#: A CronJob's Job: the CronJob's name, then the scheduled time in minutes since the epoch
#: (8 digits now; Istio's pattern allows 8 to 10).
CRONJOB_RUN = re.compile(r"(.+)-\d{8,10}")


def owner_workload(pod: Pod) -> str | None:
    """The name of the workload that owns *pod*, as metrics label it; None: it owns itself.

    The controlling owner reference names it, except that a Deployment's pods are owned by a
    ReplicaSet named after the Deployment plus the pod template's hash, and a CronJob's by a
    Job named after the CronJob plus its scheduled minute: those suffixes are dropped, so a
    rollout or the next run keeps the workload's series (Istio names workloads the same way,
    and also takes a Job named like a CronJob's run for one without reading its owner).
    """
    meta = pod.metadata
    if meta is None:
        return None
    owner = next((o for o in meta.ownerReferences or () if o.controller), None)
    if owner is None or not owner.name:
        return None
    template_hash = (meta.labels or {}).get(TEMPLATE_HASH)
    if owner.kind == "ReplicaSet" and template_hash:
        return owner.name.removesuffix(f"-{template_hash}") or owner.name
    if owner.kind == "Job" and (run := CRONJOB_RUN.fullmatch(owner.name)):
        return run.group(1)
    return owner.name


def workload_of(
    pod: Pod, namespace: Namespace | None, sandbox: SandboxRecord | None = None
) -> Workload | None:
    """The workload the agent knows *pod* as, or None if it has none (no node, no address).

    *sandbox* is the pod's sandbox if this node knows it: its netns and cgroup, and the
    addresses the CNI result gave it, which the API learns only after the sandbox exists.
    A pod of a host-network pod's addresses are the node's: it is no destination of its own.
    """
    meta, spec = pod.metadata, pod.spec
    if meta is None or spec is None or not meta.name or not spec.nodeName:
        return None
    if spec.hostNetwork:
        return None
    ips = pod_ips(pod) or (sandbox.ips if sandbox is not None else ())
    if not ips:
        return None
    try:
        return Workload(
            name=meta.name,
            namespace=meta.namespace or "default",
            service_account=spec.serviceAccountName or "default",
            node=spec.nodeName,
            ips=ips,
            netns=sandbox.netns if sandbox is not None else None,
            cgroup=sandbox.cgroup if sandbox is not None else None,
            meshed=not_meshed_because(pod, namespace) is None,
            uid=meta.uid,
            owner=owner_workload(pod),
        )
    except ValidationError as exc:
        log.warning("ignoring pod %s/%s: %s", meta.namespace, meta.name, describe(exc))
        return None


#: What :func:`workload_of` reads of its inputs: the pod's and the namespace's
#: (uid, resourceVersion) and the sandbox. The API server gives an object a new
#: resourceVersion on every change, so an equal stamp means an equal workload.
Stamp = tuple[str, str, str, str, SandboxRecord | None]


def stamp_of(pod: Pod, namespace: Namespace | None, sandbox: SandboxRecord | None) -> Stamp | None:
    """The stamp of *pod*'s inputs, or None if an object lacks the fields that make it one."""
    meta = pod.metadata
    if meta is None or not meta.uid or not meta.resourceVersion:
        return None
    ns_uid = ns_version = ""
    if namespace is not None:
        ns_meta = namespace.metadata
        if ns_meta is None or not ns_meta.uid or not ns_meta.resourceVersion:
            return None
        ns_uid, ns_version = ns_meta.uid, ns_meta.resourceVersion
    return (meta.uid, meta.resourceVersion, ns_uid, ns_version, sandbox)


class WorkloadCache:
    """:func:`workload_of` for the pods that changed since the last build, the previous
    result for the others.

    The snapshot is rebuilt after every watch event; without this, each event of a burst
    of N pods validated all N workloads again (O(N²) per burst, on the event loop that
    answers the CNI ADDs). An unchanged pod also keeps its Workload object, which makes
    comparing snapshots cheap (dict comparison checks identity first).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[Stamp, Workload | None]] = {}
        self._next: dict[tuple[str, str], tuple[Stamp, Workload | None]] = {}

    def get(
        self,
        key: tuple[str, str],
        pod: Pod,
        namespace: Namespace | None,
        sandbox: SandboxRecord | None = None,
    ) -> Workload | None:
        stamp = stamp_of(pod, namespace, sandbox)
        if stamp is None:
            return workload_of(pod, namespace, sandbox)
        entry = self._entries.get(key)
        if entry is None or entry[0] != stamp:
            entry = (stamp, workload_of(pod, namespace, sandbox))
        self._next[key] = entry
        return entry[1]

    def done(self) -> None:
        """End of a build: keep only what it asked for (deleted pods are forgotten)."""
        self._entries, self._next = self._next, {}


def same_sandbox(workload: Workload | None, record: SandboxRecord) -> bool:
    return (
        workload is not None and workload.netns == record.netns and workload.cgroup == record.cgroup
    )


# -- the source ------------------------------------------------------------------------------


class KubernetesSource:
    """A :class:`~smesh.agent.workloads.WorkloadSource` over the API server and the CNI."""

    def __init__(
        self,
        api: KubeApi,
        *,
        node: str,
        settings: KubernetesSettings,
        sandbox_dir: Path,
        metrics: AgentMetrics | None = None,
        cgroup_mount: Path | None = None,
    ) -> None:
        self.api = api
        self.node = node
        self.settings = settings
        self.records = RecordStore(sandbox_dir)
        self.metrics = metrics
        self._cgroup_mount = cgroup_mount
        self._driver: layout.CgroupDriver | None = (
            None
            if settings.cgroup_driver == "auto"
            else layout.CgroupDriver(settings.cgroup_driver)
        )
        self.local: Informer[Pod] = Informer(
            api, LEAN_PODS, Selection(field_selector=f"spec.nodeName={node}")
        )
        self.cluster: Informer[Pod] = Informer(api, LEAN_PODS)
        self.namespaces: Informer[Namespace] = Informer(api, NAMESPACES)
        # The Services and their endpoints, for captured connects to a ClusterIP. They do
        # not change what is meshed: their events go to the table, never to a snapshot.
        self.services = ServiceTable()
        self.service_informer: Informer[Service] = Informer(api, LEAN_SERVICES)
        self.slice_informer: Informer[HeldSlice] = Informer(api, LEAN_SLICES)
        self.sandboxes: dict[str, SandboxRecord] = {}  # by pod UID
        self._found: dict[str, SandboxRecord] = {}  # by pod UID: found on the node at start
        self._sandboxed: dict[str, Workload] = {}  # by pod UID: node pods with a CNI record
        self._meshed: dict[str, Workload] = {}
        self._failed: dict[str, tuple[Workload, str]] = {}
        self._changed = asyncio.Event()  # for the snapshot loop
        self._progress = asyncio.Event()  # for hand-off requests waiting on the agent
        self._synced: set[str] = set()
        self.services_synced: set[str] = set()  # "services", "endpointslices" once listed
        self._cluster_cache = WorkloadCache()
        self._local_cache = WorkloadCache()
        self.server = SandboxServer(
            self, settings.cni_socket, settings.enrol_timeout, self._observe
        )
        if metrics is not None:
            metrics.kubernetes(self.informer_stats)

    @classmethod
    def from_config(cls, config: AgentConfig, metrics: AgentMetrics) -> KubernetesSource:
        assert config.kubernetes is not None
        api = KubeApi.from_kubeconfig(config.kubernetes.kubeconfig)
        return cls(
            api,
            node=config.node,
            settings=config.kubernetes,
            sandbox_dir=config.sandbox_dir,
            metrics=metrics,
        )

    def informer_stats(self) -> dict[str, InformerStats]:
        return {
            "node_pods": self.local.stats,
            "cluster_pods": self.cluster.stats,
            "namespaces": self.namespaces.stats,
            "services": self.service_informer.stats,
            "endpointslices": self.slice_informer.stats,
        }

    @property
    def synced(self) -> bool:
        return len(self._synced) == 3

    # -- snapshots ---------------------------------------------------------------------

    def _namespace_objects(self) -> dict[str, Namespace]:
        return {name: ns for (_, name), ns in self.namespaces.snapshot().items()}

    def sandbox_of(self, pod: Pod) -> SandboxRecord | None:
        uid = pod.metadata.uid if pod.metadata else None
        if not uid:
            return None
        return self.sandboxes.get(uid) or self._found.get(uid)

    def build(self) -> Snapshot:
        """Every pod of the cluster with an address; this node's from its own informer."""
        namespaces = self._namespace_objects()
        workloads: dict[str, Workload] = {}
        for key, pod in self.cluster.snapshot().items():
            if pod.spec is not None and pod.spec.nodeName == self.node:
                continue  # the node's informer is the authority on the node's pods
            w = self._cluster_cache.get(key, pod, namespaces.get(key[0]))
            if w is not None:
                workloads[w.key] = w
        uids = set()
        sandboxed: dict[str, Workload] = {}
        for key, pod in self.local.snapshot().items():
            uids.add(pod.metadata.uid if pod.metadata else None)
            w = self._local_cache.get(key, pod, namespaces.get(key[0]), self.sandbox_of(pod))
            if w is not None:
                workloads[w.key] = w
                if w.uid is not None and w.uid in self.sandboxes:
                    sandboxed[w.uid] = w
        # A pod gone from the API while the CNI has not deleted its sandbox (a forced
        # deletion: a graceful one ends after the kubelet's teardown) may still run its apps:
        # it stays as it was until the DEL (or its netns is gone), so its connects never go
        # out uncaptured.
        for uid, w in self._sandboxed.items():
            record = self.sandboxes.get(uid)
            if (
                uid not in uids
                and record is not None
                and w.key not in workloads
                and netns.exists(record.netns)
            ):
                workloads[w.key] = w
                sandboxed[uid] = w
        self._sandboxed = sandboxed
        self._cluster_cache.done()
        self._local_cache.done()
        for gone in set(self._found) - uids:  # found at start, deleted since
            del self._found[gone]
        return Snapshot(workloads)

    def _notify(self) -> None:
        self._changed.set()
        self._progress.set()
        self._progress = asyncio.Event()

    def _progressed(self) -> Awaitable[bool]:
        """The next notification: bound to the current event now, so a notification that
        comes before the waiter first runs is not missed."""
        return self._progress.wait()

    async def _run(self, name: str, informer: Informer[Pod] | Informer[Namespace]) -> None:
        async for item in informer.events():
            if isinstance(item, Synced):
                self._synced.add(name)
            self._notify()

    async def _follow_services(self) -> None:
        async for item in self.service_informer.events():
            if isinstance(item, Synced):
                self.services_synced.add("services")
            else:
                apply_service_event(self.services, item)

    async def _follow_slices(self) -> None:
        async for item in self.slice_informer.events():
            if isinstance(item, Synced):
                self.services_synced.add("endpointslices")
            else:
                apply_slice_event(self.services, item)

    def listening(self) -> list[tuple[str, socket.socket]]:
        """The CNI hand-off's listening socket, for an agent hand-over."""
        return [("cni", sock) for sock in self.server.sockets()]

    def inherit(self, take: Callable[[str, str], socket.socket | None]) -> None:
        """Serve the CNI hand-off on the socket the previous agent passed, if it did."""
        self.server.inherited = take("cni", str(self.server.path))

    def hand_over(self) -> None:
        self.server.hand_over()

    async def watch(self) -> AsyncIterator[Snapshot]:
        self.sandboxes = self.records.load()
        loaded = set(self.sandboxes)
        await self.server.start()
        tasks = [
            asyncio.create_task(self._run(name, informer), name=f"informer {name}")
            for name, informer in (
                ("node_pods", self.local),
                ("cluster_pods", self.cluster),
                ("namespaces", self.namespaces),
            )
        ]
        tasks += [
            asyncio.create_task(self._follow_services(), name="informer services"),
            asyncio.create_task(self._follow_slices(), name="informer endpointslices"),
        ]
        try:
            last: Snapshot | None = None
            while True:
                await self._changed.wait()
                self._changed.clear()
                for task in tasks:
                    if task.done():  # informers retry forever: this is a bug; say so
                        task.result()
                        raise RuntimeError(f"{task.get_name()} ended")
                if not self.synced:
                    continue
                if last is None:
                    self._restore(loaded)
                snapshot = self.build()
                if last is None or snapshot.workloads != last.workloads:
                    last = snapshot
                    yield snapshot
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.close()
            await self.api.aclose()

    # -- restart without the CNI -------------------------------------------------------

    def _restore(self, loaded: set[str]) -> None:
        """After the first complete lists: keep the persisted sandboxes whose pod is still
        in the API and whose netns still exists; find the others' in their cgroups."""
        local = {
            pod.metadata.uid: pod
            for pod in self.local.snapshot().values()
            if pod.metadata is not None and pod.metadata.uid
        }
        for uid in loaded:
            record = self.sandboxes.get(uid)
            if record is None:
                continue
            if uid not in local or not netns.exists(record.netns):
                why = "its pod is gone" if uid not in local else f"netns {record.netns} is gone"
                log.info("dropping the sandbox record of %s: %s", record.key, why)
                del self.sandboxes[uid]
                with contextlib.suppress(Exception):
                    self.records.remove(uid)
        for uid, pod in local.items():
            if uid in self.sandboxes or pod.status is None:
                continue
            if pod.status.phase != "Running" or (pod.spec is not None and pod.spec.hostNetwork):
                continue
            found = self._find_on_node(pod)
            if found is not None:
                self._found[uid] = found

    def _find_on_node(self, pod: Pod) -> SandboxRecord | None:
        """A running pod without a record: its cgroup from the kubelet's layout, its netns
        that of a process in it (the CNI plugin ran while no agent did, or before smesh)."""
        assert pod.metadata is not None
        assert pod.metadata.uid is not None
        key = f"{pod.metadata.namespace}/{pod.metadata.name}"
        try:
            cgroup = self.pod_cgroup(pod)
        except (layout.LayoutError, OSError) as exc:
            log.warning("pod %s has no sandbox record and no cgroup found: %s", key, exc)
            return None
        for pid in cgroups.pids(cgroup):
            path = f"/proc/{pid}/ns/net"
            with contextlib.suppress(OSError):
                Path(path).stat()
                log.info("found the sandbox of %s from process %d", key, pid)
                return SandboxRecord(
                    uid=pod.metadata.uid,
                    namespace=pod.metadata.namespace or "default",
                    name=pod.metadata.name or "",
                    netns=path,
                    cgroup=cgroup,
                    ips=pod_ips(pod),
                )
        log.warning("pod %s has no sandbox record and no process in %s", key, cgroup)
        return None

    def pod_cgroup(self, pod: Pod) -> Path:
        """The pod's cgroup directory from the kubelet's layout (LayoutError if absent)."""
        assert pod.metadata is not None
        assert pod.metadata.uid is not None
        mount = self._cgroup_mount or cgroups.v2_root()
        root = self.settings.cgroup_root
        if self._driver is None:
            self._driver = layout.detect_driver(mount, root)
        qos = layout.qos_class(pod.status.qosClass if pod.status else None)
        return layout.find_pod_cgroup(mount, self._driver, root, qos, pod.metadata.uid)

    # -- the agent's side of the hand-off (SandboxHost) -----------------------------------

    def reconciled(
        self, meshed: Mapping[str, Workload], failed: Mapping[str, tuple[Workload, str]]
    ) -> None:
        self._meshed = dict(meshed)
        self._failed = dict(failed)
        self._progress.set()
        self._progress = asyncio.Event()

    def _local_pod(self, namespace: str, name: str) -> Pod | None:
        return self.local.snapshot().get((namespace, name))

    async def admit(self, request: SandboxRequest, deadline: float) -> SandboxRecord:
        for field, value in (
            ("podNamespace", request.pod_namespace),
            ("podName", request.pod_name),
            ("podUid", request.pod_uid),
            ("netns", request.netns),
        ):
            if not value:
                raise BadRequest(f"{field}: required for ADD (CNI_ARGS K8S_POD_*, CNI_NETNS)")
        if not netns.exists(request.netns):
            raise BadRequest(f"netns: {request.netns!r} does not exist")
        found: list[Pod] = []

        def seen() -> bool:
            pod = self._local_pod(request.pod_namespace, request.pod_name)
            if pod is not None and pod.metadata is not None and pod.metadata.uid == request.pod_uid:
                found.append(pod)
                return True
            return False

        if not seen():
            # The kubelet has the pod from the API: if the informer is waiting out a backoff
            # after an API outage, it need not (it would miss POD_LOOKUP_WAIT, and fail the ADD).
            self.local.wake()
        lookup = min(deadline, time.monotonic() + POD_LOOKUP_WAIT)
        if not await wait_until(seen, self._progressed, lookup):
            raise HandoffFailure(
                f"pod {request.pod} (uid {request.pod_uid}) is not bound to node {self.node} "
                f"in the API server, as far as the agent has seen in {POD_LOOKUP_WAIT:g} s"
            )
        pod = found[0]
        try:
            cgroup = self.pod_cgroup(pod)
        except layout.LayoutError as exc:
            raise HandoffFailure(str(exc)) from None
        record = SandboxRecord(
            uid=request.pod_uid,
            namespace=request.pod_namespace,
            name=request.pod_name,
            container_id=request.container_id,
            netns=request.netns,
            cgroup=cgroup,
            ips=request.ips,
        )
        self.records.put(record)
        self.sandboxes[record.uid] = record
        self._found.pop(record.uid, None)
        self._notify()
        return record

    async def enrolment(self, record: SandboxRecord, deadline: float) -> Outcome:
        outcome: list[Outcome] = []

        def decided() -> bool:
            if self.sandboxes.get(record.uid) != record:
                outcome.append(Outcome("failed", "the sandbox was deleted (CNI DEL) meanwhile"))
                return True
            pod = self._local_pod(record.namespace, record.name)
            if pod is None or pod.metadata is None or pod.metadata.uid != record.uid:
                outcome.append(Outcome("failed", f"pod {record.key} was deleted"))
                return True
            namespace = self._namespace_objects().get(record.namespace)
            why = not_meshed_because(pod, namespace)
            if why is not None:
                outcome.append(Outcome("not_meshed", why))
                return True
            if workload_of(pod, namespace, self.sandboxes.get(record.uid)) is None:
                outcome.append(
                    Outcome(
                        "failed",
                        f"pod {record.key} has no IP address: neither the CNI result before "
                        "smesh-cni nor the pod's status.podIPs has one",
                    )
                )
                return True
            if same_sandbox(self._meshed.get(record.key), record):
                outcome.append(Outcome("meshed"))
                return True
            failure = self._failed.get(record.key)
            if failure is not None and same_sandbox(failure[0], record):
                outcome.append(Outcome("failed", f"the agent cannot mesh it: {failure[1]}"))
                return True
            return False

        if await wait_until(decided, self._progressed, deadline):
            return outcome[-1]
        return Outcome(
            "timeout",
            f"the agent did not mesh pod {record.key} within kubernetes.enrolTimeout "
            f"({self.settings.enrol_timeout:g} s): its certificate, listeners or capture "
            "are not in place yet (see the agent's /debug/workloads)",
        )

    async def release(self, request: SandboxRequest, deadline: float) -> str:
        record = self.sandboxes.get(request.pod_uid) if request.pod_uid else None
        if record is None:  # a DEL may come without the pod's args: find it by container
            record = next(
                (r for r in self.sandboxes.values() if r.container_id == request.container_id),
                None,
            )
        if record is None or (record.container_id and record.container_id != request.container_id):
            return ""  # nothing, or a newer sandbox of the pod: idempotent, nothing to do
        self.records.remove(record.uid)
        del self.sandboxes[record.uid]
        self._notify()
        await wait_until(
            lambda: not same_sandbox(self._meshed.get(record.key), record),
            self._progressed,
            deadline,
        )
        return record.key

    def check(self, request: SandboxRequest) -> Outcome:
        record = self.sandboxes.get(request.pod_uid)
        if record is None or record.container_id != request.container_id:
            return Outcome("failed", f"the agent has no sandbox of {request.pod} on record")
        pod = self._local_pod(record.namespace, record.name)
        if pod is None:
            return Outcome("failed", f"pod {record.key} is not in the API server")
        if not_meshed_because(pod, self._namespace_objects().get(record.namespace)) is not None:
            return Outcome("not_meshed")
        if same_sandbox(self._meshed.get(record.key), record):
            return Outcome("meshed")
        failure = self._failed.get(record.key)
        why = failure[1] if failure is not None else "not meshed yet"
        return Outcome("failed", f"pod {record.key} should be meshed but is not: {why}")

    def _observe(self, command: str, result: str, seconds: float | None) -> None:
        if self.metrics is None:
            return
        self.metrics.handoff_requests.labels(command, result).inc()
        if command == "add" and seconds is not None:
            self.metrics.enrol_duration.labels(result).observe(seconds)
