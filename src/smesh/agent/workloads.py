"""Which pods exist: the agent's desired state.

A :class:`WorkloadSource` yields complete snapshots of the cluster's workloads; the agent
reconciles its pods against each snapshot, so a missed or repeated event cannot leave it
out of step. The lab's source is a directory with one file per pod; the Kubernetes source
(smesh.kubernetes.source) watches the API server and takes sandboxes from the CNI plugin.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smesh.errors import SmeshError
from smesh.validation import IP, IPAddress, describe

log = logging.getLogger(__name__)

_LABEL = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"


class WorkloadError(SmeshError):
    """A workload description is invalid; the message names the file and field."""


class Workload(BaseModel):
    """One pod as the agent needs to know it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(pattern=_LABEL)]
    namespace: Annotated[str, Field(pattern=_LABEL)] = "default"
    service_account: Annotated[str, Field(pattern=_LABEL, alias="serviceAccount")] = "default"
    node: Annotated[str, Field(min_length=1)]
    ips: Annotated[tuple[IP, ...], Field(min_length=1)]
    # The pod's sandbox: `ip netns` name or a path such as /proc/PID/ns/net, and the absolute
    # path of its cgroup v2 directory. None where this node does not know it (another
    # node's pod, or a local pod before its CNI ADD): such a pod is never meshed here.
    netns: str | None = None
    cgroup: Path | None = None
    meshed: bool = True
    uid: str | None = None  # the Kubernetes pod UID, where there is one
    # The pod's owning workload (a Deployment's, a StatefulSet's name), where there is one:
    # what metrics label it by, so a rollout keeps its series (docs/agent.md, "Metrics").
    owner: Annotated[str, Field(min_length=1, max_length=253)] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def workload_label(self) -> str:
        """The ``workload`` of metrics: the owning workload's name, else the pod's own."""
        return self.owner or self.name

    @property
    def has_sandbox(self) -> bool:
        return self.netns is not None and self.cgroup is not None

    def sandbox(self) -> tuple[str, Path]:
        """(netns, cgroup); a pod without them cannot be meshed on this node."""
        if self.netns is None or self.cgroup is None:
            raise WorkloadError(f"pod {self.key}: its sandbox (netns, cgroup) is not known here")
        return self.netns, self.cgroup

    @property
    def ipv4(self) -> ipaddress.IPv4Address | None:
        return next((ip for ip in self.ips if isinstance(ip, ipaddress.IPv4Address)), None)

    @property
    def ipv6(self) -> ipaddress.IPv6Address | None:
        return next((ip for ip in self.ips if isinstance(ip, ipaddress.IPv6Address)), None)


@dataclass(frozen=True)
class Snapshot:
    """Every workload of the cluster, by ``namespace/name``."""

    workloads: Mapping[str, Workload]

    def on_node(self, node: str) -> dict[str, Workload]:
        return {k: w for k, w in self.workloads.items() if w.node == node}


class WorkloadSource(Protocol):
    def watch(self) -> AsyncIterator[Snapshot]:
        """Yield the current snapshot, then a new one after every change."""
        ...

    def reconciled(
        self, meshed: Mapping[str, Workload], failed: Mapping[str, tuple[Workload, str]]
    ) -> None:
        """The agent's state after each reconcile (and each retry of a failed pod): the pods
        of this node meshed now (capture attached, listeners open) and those whose meshing
        failed, with why, each as the workload its runtime serves. The Kubernetes source
        answers CNI ADDs from it; the workload tells a pod meshed (or failed) with *this*
        sandbox from an answer about the pod's previous one.
        """
        ...


def parse(text: str, origin: str) -> Workload:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        raise WorkloadError(f"{origin}: not valid JSON or YAML") from None
    try:
        workload = Workload.model_validate(data)
    except ValidationError as exc:
        raise WorkloadError(f"{origin}: {describe(exc)}") from None
    # A pod file describes the whole pod: the lab always knows its sandbox.
    for field in ("netns", "cgroup"):
        if getattr(workload, field) is None:
            raise WorkloadError(f"{origin}: {field}: required but missing")
    return workload


class DirectorySource:
    """One ``*.json`` / ``*.yaml`` file per pod in a directory, polled for changes.

    A file that becomes invalid keeps its last good version (and is logged once), so a
    half-written edit never tears a pod down.
    """

    def __init__(self, directory: Path, interval: float = 0.2) -> None:
        self.directory = directory
        self.interval = interval
        self._seen: dict[str, tuple[int, int]] = {}
        self._good: dict[str, Workload] = {}
        self._unreadable = ""  # why the directory could not be read, last time

    def scan(self) -> Snapshot:
        current: dict[str, tuple[int, int]] = {}
        try:
            entries = sorted(self.directory.iterdir())
        except FileNotFoundError:
            entries = []
        except OSError as exc:  # not a directory, no permission: keep the pods it had
            if self._unreadable != str(exc):
                log.error("cannot read the workloads directory: %s; keeping what it held", exc)
            self._unreadable = str(exc)
            return self._snapshot()
        self._unreadable = ""
        for path in entries:
            if path.suffix not in {".json", ".yaml", ".yml"} or path.name.startswith("."):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            signature = (stat.st_mtime_ns, stat.st_size)
            current[path.name] = signature
            if self._seen.get(path.name) == signature:
                continue
            try:
                self._good[path.name] = parse(path.read_text(), str(path))
            except (WorkloadError, OSError) as exc:
                log.error("ignoring workload file: %s", exc)
        for gone in set(self._good) - set(current):
            del self._good[gone]
        self._seen = current
        return self._snapshot()

    def _snapshot(self) -> Snapshot:
        by_key: dict[str, Workload] = {}
        for filename, workload in sorted(self._good.items()):
            if workload.key in by_key:
                log.error("%s describes %s again; ignoring it", filename, workload.key)
                continue
            by_key[workload.key] = workload
        return Snapshot(by_key)

    def reconciled(
        self, meshed: Mapping[str, Workload], failed: Mapping[str, tuple[Workload, str]]
    ) -> None:
        """Nothing waits on the agent here: the lab starts a pod's apps after it is meshed."""

    async def watch(self) -> AsyncIterator[Snapshot]:
        last: Snapshot | None = None
        while True:
            snapshot = self.scan()
            if last is None or snapshot.workloads != last.workloads:
                last = snapshot
                yield snapshot
            await asyncio.sleep(self.interval)


def write(directory: Path, workload: Workload) -> Path:
    """Publish *workload* atomically (how the lab, and tests, add or change a pod)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{workload.name}.json"
    tmp = directory / f".{workload.name}.json.tmp"
    tmp.write_text(workload.model_dump_json(by_alias=True, indent=2))
    tmp.replace(path)
    return path


class Registry:
    """The mesh as seen from the outbound side: who answers at a destination address."""

    def __init__(self, snapshot: Snapshot | None = None) -> None:
        self._by_ip: dict[IPAddress, Workload] = {}
        self._snapshot = Snapshot({})
        if snapshot is not None:
            self.update(snapshot)

    def update(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._by_ip = {ip: w for w in snapshot.workloads.values() for ip in w.ips}

    def workloads(self) -> list[Workload]:
        return list(self._snapshot.workloads.values())

    def lookup(self, ip: IPAddress) -> Workload | None:
        return self._by_ip.get(ip)
