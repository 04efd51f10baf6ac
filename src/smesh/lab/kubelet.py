"""The lab's kubelet: runs the Pods the scheduler binds to one lab node, without images.

One process per node, in the node's network namespace and ``host`` cgroup, authenticated as
``system:node:node-k`` (so the Node authorizer and NodeRestriction apply, as to a kubelet).
It registers its Node, renews its Lease, and watches the Pods with ``spec.nodeName=node-k``
through :class:`smesh.kubernetes.informer.Informer`. For each pod a worker:

1. makes the sandbox as a container runtime would: a named netns ``LAB.k8s-<uid>``, the pod
   cgroup of the kubelet's cgroupfs layout (:mod:`smesh.kubernetes.layout`, root
   ``/smesh-lab-LAB/node-k``), then CNI ADD through the node's network list
   (:mod:`smesh.lab.kubelet_cni`). A failed ADD is undone (DEL, netns, cgroup), reported as a
   ``FailedCreatePodSandBox`` event with the plugin's message, and retried with backoff; the
   pod stays Pending in ContainerCreating meanwhile;
2. runs each container's ``command``+``args`` in the netns and a child cgroup per container,
   output to ``<container>.log`` in the pod's directory, restarting per ``restartPolicy`` with
   backoff (:mod:`smesh.lab.kubelet_status`);
3. merge-patches the pod's status whenever it changes;
4. on ``deletionTimestamp``: SIGTERM, SIGKILL after the grace period, CNI DEL, netns and
   cgroup removed, then the pod deleted with ``gracePeriodSeconds=0`` and a UID precondition.

The sandbox record (``pods/<uid>/sandbox.json``) is written before anything is made, so a
restarted kubelet adopts what it made (processes by pid and start time) or removes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from lightkube.models.core_v1 import ConfigMapKeySelector, Container, Probe, SecretKeySelector
from lightkube.resources.core_v1 import Pod

from smesh.kubernetes.backoff import Backoff
from smesh.kubernetes.client import PODS, KubeApi, Selection
from smesh.kubernetes.errors import KubernetesError
from smesh.kubernetes.informer import Informer
from smesh.kubernetes.layout import CgroupDriver, LayoutError, pod_cgroup, qos_class
from smesh.kubernetes.store import Event, EventType, Synced
from smesh.kubernetes.writer import KubeWriter, is_status
from smesh.lab import kubelet_cni as cni
from smesh.lab import kubelet_dns, kubelet_exec, kubelet_probe, kubepaths, services, state
from smesh.lab import kubelet_volumes as volumes
from smesh.lab.errors import LabError
from smesh.lab.kubelet_status import (
    RUNNING,
    TERMINATED,
    WAITING,
    ContainerRecord,
    crashes_after_exit,
    init_done,
    init_policy,
    now_micro,
    now_rfc3339,
    phase,
    pod_status,
    restart_delay,
    seconds_since,
    should_restart,
)
from smesh.lab.topology import CONTROL_IP4, Node, Topology
from smesh.linux import cgroups, iproute, netns
from smesh.linux.errors import LinuxError
from smesh.linux.files import write_atomic

log = logging.getLogger("smesh.lab.kubelet")

LEASE_DURATION = 40  # seconds, the kubelet's default
LEASE_RENEW = 10.0  # a quarter of it, as the kubelet does
NODE_STATUS_PERIOD = 60.0
MAX_PODS = 110
DEFAULT_GRACE = 30
#: The checkout's venv first: its ``smesh`` stands in for the image of smesh's own pods.
DEFAULT_PATH = f"{sys.prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The checkout whose smesh stands in for every container's image (its .venv's parent).
IMAGE_ROOT = str(Path(sys.prefix).resolve().parent)
#: In-cluster clients talk to the API server itself, not through the ``kubernetes``
#: Service's ClusterIP: the host-network agents then need no kube-proxy on their path.
SERVICE_HOST = str(CONTROL_IP4)
SERVICE_PORT = str(kubepaths.API_PORT)
CONFIG_RETRY = 10.0  # seconds before a container whose configuration failed is tried again
TOKEN_RETRY = 10.0  # seconds before a failed token renewal is tried again
MAX_TERMINATION_MESSAGE = 4096  # bytes of terminationMessagePath the kubelet reads
FALLBACK_LOG_LINES = 80  # FallbackToLogsOnError: the log's last lines ...
FALLBACK_LOG_BYTES = 2048  # ... and at most this many bytes of them
RUNTIME = "smesh-lab"
#: The node's resolver configuration (the machine's: lab nodes share its filesystem).
RESOLV_CONF = "/etc/resolv.conf"
CLUSTER_DOMAIN = services.CLUSTER_DOMAIN
STATUS_RETRY = 2.0  # seconds before a failed status update is tried again


def short_uid(uid: str) -> str:
    return uid.replace("-", "")[:12]


def pod_netns(lab: str, uid: str) -> str:
    """The sandbox's namespace; the ``LAB.`` prefix lets ``lab down`` find it."""
    return f"{lab}.k8s-{short_uid(uid)}"


@dataclass
class Sandbox:
    """What the kubelet made for one pod, persisted so a restarted kubelet finds it."""

    uid: str
    namespace: str
    name: str
    container_id: str
    netns: str  # "" for a host-network pod
    cgroup: str  # absolute path
    host_network: bool
    created_at: str
    ready: bool = False
    released: bool = False
    ips: list[str] = field(default_factory=list)
    cni_result: dict[str, Any] = field(default_factory=dict)
    containers: dict[str, ContainerRecord] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(directory / "sandbox.json", json.dumps(asdict(self), indent=2).encode())

    @classmethod
    def load(cls, path: Path) -> Sandbox:
        data = json.loads(path.read_text())
        data["containers"] = {
            name: ContainerRecord(**record) for name, record in data["containers"].items()
        }
        return cls(**data)


def load_sandboxes(pods_dir: Path) -> dict[str, Sandbox]:
    """Every sandbox record under *pods_dir*, by pod UID (damaged ones are logged, skipped)."""
    found = {}
    for path in sorted(pods_dir.glob("*/sandbox.json")):
        try:
            sandbox = Sandbox.load(path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring damaged sandbox record %s: %s", path, exc)
            continue
        found[sandbox.uid] = sandbox
    return found


def cni_call(sandbox: Sandbox) -> cni.Invocation:
    """The CNI parameters of *sandbox*, the same for its ADD and its DEL."""
    return cni.Invocation(
        container_id=sandbox.container_id,
        netns_path=str(netns.path_of(sandbox.netns)),
        args=cni.cni_args(sandbox.namespace, sandbox.name, sandbox.uid, sandbox.container_id),
    )


def grace_period(pod: Pod) -> int:
    """Seconds between SIGTERM and SIGKILL: the deletion's own, else the pod's, else 30."""
    meta, spec = pod.metadata, pod.spec
    if meta is not None and meta.deletionGracePeriodSeconds is not None:
        return meta.deletionGracePeriodSeconds
    if spec is not None and spec.terminationGracePeriodSeconds is not None:
        return spec.terminationGracePeriodSeconds
    return DEFAULT_GRACE


def container_argv(spec: Container) -> list[str]:
    """``command`` + ``args``: there are no images, so no entrypoint to fall back on."""
    return [*(spec.command or []), *(spec.args or [])]


#: ConfigMaps and Secrets a pod's environment names: (kind, name) → data (None: not found).
EnvObjects = dict[tuple[str, str], dict[str, bytes] | None]


def env_references(pod: Pod) -> set[tuple[str, str]]:
    """Every (``configmaps``|``secrets``, name) the containers' ``env``/``envFrom`` read."""
    found = set()
    for spec in pod.spec.containers if pod.spec else []:
        for var in spec.env or []:
            source = var.valueFrom
            if source is not None and source.configMapKeyRef is not None:
                found.add(("configmaps", source.configMapKeyRef.name or ""))
            if source is not None and source.secretKeyRef is not None:
                found.add(("secrets", source.secretKeyRef.name or ""))
        for env_from in spec.envFrom or []:
            if env_from.configMapRef is not None:
                found.add(("configmaps", env_from.configMapRef.name or ""))
            if env_from.secretRef is not None:
                found.add(("secrets", env_from.secretRef.name or ""))
    return found


def _lookup(
    objects: EnvObjects, kind: str, name: str, key: str | None, optional: bool
) -> dict[str, bytes]:
    data = objects.get((kind, name))
    if data is None:
        if optional:
            return {}
        raise kubelet_exec.ContainerConfigError(f'{kind.removesuffix("s")} "{name}" not found')
    if key is not None and key not in data and not optional:
        raise kubelet_exec.ContainerConfigError(
            f"couldn't find key {key} in {kind.removesuffix('s')} {name}"
        )
    return data


def container_env(
    spec: Container,
    pod: Pod,
    node: str,
    pod_ips: list[str],
    objects: EnvObjects | None = None,
    *,
    host_ips: list[str] | None = None,
) -> dict[str, str]:
    """The container's environment: the API server's address, then ``envFrom``, then ``env``
    (literals, ``fieldRef``, ``configMapKeyRef``, ``secretKeyRef``), later entries winning."""
    meta = pod.metadata
    objects = objects or {}
    env = {
        "PATH": DEFAULT_PATH,
        "HOSTNAME": (meta.name if meta else "") or "",
        "HOME": "/root",
        "KUBERNETES_SERVICE_HOST": SERVICE_HOST,
        "KUBERNETES_SERVICE_PORT": SERVICE_PORT,
        "KUBERNETES_SERVICE_PORT_HTTPS": SERVICE_PORT,
        "KUBERNETES_PORT": f"tcp://{SERVICE_HOST}:{SERVICE_PORT}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{SERVICE_HOST}:{SERVICE_PORT}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_ADDR": SERVICE_HOST,
        "KUBERNETES_PORT_443_TCP_PORT": SERVICE_PORT,
    }
    for env_from in spec.envFrom or []:
        ref = env_from.configMapRef or env_from.secretRef
        if ref is None:
            continue
        kind = "configmaps" if env_from.configMapRef is not None else "secrets"
        data = _lookup(objects, kind, ref.name or "", None, bool(ref.optional))
        for key, value in data.items():
            env[f"{env_from.prefix or ''}{key}"] = value.decode(errors="replace")
    for var in spec.env or []:
        source = var.valueFrom
        if var.value is not None:
            env[var.name] = var.value
        elif source is not None and source.fieldRef is not None:
            try:
                path = source.fieldRef.fieldPath
                env[var.name] = volumes.field_value(pod, path, node, pod_ips, host_ips)
            except volumes.VolumeError as exc:
                raise kubelet_exec.ContainerConfigError(f"env {var.name}: {exc}") from None
        elif source is not None and source.resourceFieldRef is not None:
            field = source.resourceFieldRef
            divisor = str(field.divisor) if field.divisor is not None else None
            try:
                resource = field.resource
                env[var.name] = volumes.resource_value(spec, resource, divisor, _allocatable())
            except volumes.VolumeError as exc:
                raise kubelet_exec.ContainerConfigError(f"env {var.name}: {exc}") from None
        elif source is not None and (source.configMapKeyRef or source.secretKeyRef):
            selector: ConfigMapKeySelector | SecretKeySelector | None = (
                source.configMapKeyRef or source.secretKeyRef
            )
            assert selector is not None
            kind = "configmaps" if source.configMapKeyRef is not None else "secrets"
            name, key = selector.name or "", selector.key
            data = _lookup(objects, kind, name, key, bool(selector.optional))
            if key in data:
                env[var.name] = data[key].decode(errors="replace")
    return env


class PodWorker:
    """Runs one pod (by UID) from sandbox to deletion; woken by API updates and exits."""

    def __init__(self, kubelet: Kubelet, pod: Pod, sandbox: Sandbox | None) -> None:
        assert pod.metadata is not None
        assert pod.metadata.uid
        assert pod.metadata.name
        self.kubelet = kubelet
        self.pod = pod
        self.uid = pod.metadata.uid
        self.name = pod.metadata.name
        self.namespace = pod.metadata.namespace or "default"
        self.sandbox = sandbox
        self.directory = kubelet.pods_dir / self.uid
        self.wake = asyncio.Event()
        self.removed = False  # the pod is gone from the API
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.watched: dict[str, int] = {}  # container → pidfd
        self.next_start: dict[str, float] = {}
        self.broken: set[str] = set()  # containers that cannot run (no command)
        self.volumes_ready = False  # written for this worker (a restarted kubelet rewrites)
        self.env_objects: EnvObjects = {}
        self.tokens: dict[volumes.TokenSource, float] = {}  # → loop time its renewal is due
        self.mount_backoff = Backoff(initial=1.0, cap=30.0)
        self.probes: dict[str, asyncio.Task[None]] = {}
        self.reported: dict[str, Any] | None = None
        # What the API already has (a restarted kubelet): kept, not reset.
        status = pod.status
        self.conditions: list[dict[str, Any]] = [
            {
                "type": c.type,
                "status": c.status,
                "lastTransitionTime": _rfc3339(c.lastTransitionTime),
            }
            for c in (status.conditions or [] if status else [])
        ]
        self.start_time = _rfc3339(status.startTime if status else None) or now_rfc3339()
        self.task: asyncio.Task[None] | None = None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def specs(self) -> list[Container]:
        return list(self.pod.spec.containers) if self.pod.spec else []

    @property
    def init_specs(self) -> list[Container]:
        return list(self.pod.spec.initContainers or []) if self.pod.spec else []

    def _spec(self, name: str) -> Container | None:
        return next((c for c in [*self.init_specs, *self.specs] if c.name == name), None)

    @property
    def policy(self) -> str:
        return (self.pod.spec.restartPolicy if self.pod.spec else None) or "Always"

    @property
    def deleting(self) -> bool:
        return self.pod.metadata is not None and self.pod.metadata.deletionTimestamp is not None

    @property
    def host_network(self) -> bool:
        return bool(self.pod.spec and self.pod.spec.hostNetwork)

    def update(self, pod: Pod) -> None:
        self.pod = pod
        self.wake.set()

    def gone(self) -> None:
        self.removed = True
        self.wake.set()

    async def sleep(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)
        self.wake.clear()

    # -- the life of the pod ---------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s (%s): the worker failed", self.ref, self.uid)
        finally:
            for task in self.probes.values():
                task.cancel()
            self.probes.clear()
            for fd in self.watched.values():
                with contextlib.suppress(OSError, ValueError):
                    asyncio.get_running_loop().remove_reader(fd)
                    os.close(fd)
            self.watched.clear()
            if self.kubelet.workers.get(self.uid) is self:
                del self.kubelet.workers[self.uid]

    async def _run(self) -> None:
        finished = self.pod.status is not None and self.pod.status.phase in {"Succeeded", "Failed"}
        if self.sandbox is None and finished:
            # Ended before this kubelet (re)started: nothing to run, only a deletion to finish.
            while not (self.removed or self.deleting):
                await self.sleep(None)
            await self._finish()
            return
        backoff = Backoff(initial=1.0, cap=30.0)
        if self.sandbox is not None and not (self.sandbox.ready or self.sandbox.released):
            await self._release()  # half made by a kubelet that died making it: start over
            self.sandbox = None
        while self.sandbox is None or not (self.sandbox.ready or self.sandbox.released):
            if self.removed or self.deleting:
                await self._finish()
                return
            try:
                await self._create_sandbox()
            except (cni.CniError, LabError, LinuxError, LayoutError, OSError) as exc:
                message = f"Failed to create pod sandbox: {exc}"
                log.warning("pod %s: %s", self.ref, message)
                await self._release()
                self.sandbox = None
                with contextlib.suppress(OSError):
                    (self.directory / "sandbox.json").unlink()
                await self.kubelet.event(self, "Warning", "FailedCreatePodSandBox", message)
                await self._report()
                await self.sleep(backoff.next_delay())
        self._adopt_processes()
        while True:
            if self.removed or self.deleting:
                await self._finish()
                return
            timeout = await self._volumes()
            if self.volumes_ready:
                timeout = _earliest(timeout, self._start_due())
            sandbox = self.sandbox
            if phase(self._records(), sandbox.ready) in {"Succeeded", "Failed"}:
                await self._release()
            if not await self._report():  # the API is away: try again soon, not never
                timeout = min(timeout or STATUS_RETRY, STATUS_RETRY)
            await self.sleep(timeout)

    async def _finish(self) -> None:
        """Stop the containers, release the sandbox, and let the API forget the pod."""
        log.info("pod %s: %s", self.ref, "gone from the API" if self.removed else "deleting")
        await self._stop_containers(0 if self.removed else grace_period(self.pod))
        await self._release()
        shutil.rmtree(self.directory, ignore_errors=True)
        if not self.removed:
            await self.kubelet.delete_pod(self)

    # -- sandbox ----------------------------------------------------------------------------

    async def _create_sandbox(self) -> None:
        kubelet = self.kubelet
        qos = qos_class((self.pod.status.qosClass if self.pod.status else None) or "BestEffort")
        relative = pod_cgroup(CgroupDriver.CGROUPFS, kubelet.cgroup_root, qos, self.uid)
        sandbox = Sandbox(
            uid=self.uid,
            namespace=self.namespace,
            name=self.name,
            container_id=f"k8s-{self.uid.replace('-', '')}",
            netns="" if self.host_network else pod_netns(kubelet.lab, self.uid),
            cgroup=str(kubelet.cgroup_mount / str(relative).lstrip("/")),
            host_network=self.host_network,
            created_at=now_rfc3339(),
            containers={
                c.name: ContainerRecord(c.name, c.image or "")
                for c in [*self.init_specs, *self.specs]
            },
        )
        self.sandbox = sandbox
        sandbox.save(self.directory)  # first: whatever follows, a restart finds it
        cgroups.create(Path(sandbox.cgroup))
        if sandbox.host_network:
            sandbox.ips = list(kubelet.host_ips)
        else:
            iproute.ip("netns", "add", sandbox.netns)
            for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
                netns.write_sysctl(sandbox.netns, key, "0")
            iproute.ip("link", "set", "lo", "up", netns=sandbox.netns)
            call = cni_call(sandbox)
            network = kubelet.network()
            result = await cni.add(network, call, kubelet.cni_path, os.environ)
            sandbox.cni_result = result
            sandbox.ips = cni.result_ips(result)
        sandbox.ready = True
        sandbox.save(self.directory)
        log.info("pod %s: sandbox ready (%s)", self.ref, ", ".join(sandbox.ips))

    async def _release(self) -> None:
        if self.sandbox is not None:
            await self.kubelet.release(self.sandbox)
            if self.directory.exists():
                self.sandbox.save(self.directory)

    # -- volumes ----------------------------------------------------------------------------

    async def _volumes(self) -> float | None:
        """Write the pod's volumes once and renew its tokens when due; seconds until the next
        renewal (or retry), None when nothing is due."""
        sandbox = self.sandbox
        if sandbox is None or sandbox.released:
            return None
        kubelet = self.kubelet
        loop = asyncio.get_running_loop()
        try:
            if not self.volumes_ready:
                await volumes.write_volumes(
                    self.pod,
                    self.directory,
                    kubelet.writer.get,
                    kubelet.node.name,
                    kubelet.node_root,
                )
                self.env_objects = await self._env_objects()
                self.tokens = dict.fromkeys(volumes.token_sources(self.pod), 0.0)
            for source, due in list(self.tokens.items()):
                if due <= loop.time():
                    try:
                        after = await volumes.write_token(
                            self.pod, self.directory, source, kubelet.request_token
                        )
                    except (KubernetesError, volumes.VolumeError) as exc:
                        if not self.volumes_ready:
                            raise
                        log.warning("pod %s: renewing a token failed: %s", self.ref, exc)
                        after = TOKEN_RETRY
                    self.tokens[source] = loop.time() + after
        except (volumes.VolumeError, KubernetesError, OSError) as exc:
            message = f"MountVolume.SetUp failed: {exc}"
            log.warning("pod %s: %s", self.ref, message)
            await kubelet.event(self, "Warning", "FailedMount", message)
            return self.mount_backoff.next_delay()
        self.volumes_ready = True
        if not self.tokens:
            return None
        return max(0.0, min(self.tokens.values()) - loop.time())

    async def _env_objects(self) -> EnvObjects:
        found: EnvObjects = {}
        for kind, name in env_references(self.pod):
            path = f"/api/v1/namespaces/{self.namespace}/{kind}/{name}"
            try:
                obj = await self.kubelet.writer.get(path)
            except KubernetesError as exc:
                if not is_status(exc, 404):
                    raise
                found[kind, name] = None
                continue
            if kind == "secrets":
                found[kind, name] = volumes.secret_data(obj)
            else:
                found[kind, name] = volumes.configmap_data(obj)
        return found

    # -- containers -------------------------------------------------------------------------

    def _records(self) -> list[ContainerRecord]:
        if self.sandbox is None:
            return [ContainerRecord(c.name, c.image or "") for c in self.specs]
        return [
            self.sandbox.containers.setdefault(c.name, ContainerRecord(c.name, c.image or ""))
            for c in self.specs
        ]

    def _init_records(self) -> list[ContainerRecord]:
        if self.sandbox is None:
            return [ContainerRecord(c.name, c.image or "") for c in self.init_specs]
        return [
            self.sandbox.containers.setdefault(c.name, ContainerRecord(c.name, c.image or ""))
            for c in self.init_specs
        ]

    def _start_due(self) -> float | None:
        """Start every container that should run now; the seconds until the next is due.

        Init containers first, one at a time, each to success; then the containers."""
        loop = asyncio.get_running_loop()
        timeout: float | None = None
        assert self.sandbox is not None
        if self.sandbox.released:
            return None
        for spec, record in zip(self.init_specs, self._init_records(), strict=True):
            if init_done(record):
                continue
            if record.state == RUNNING or spec.name in self.broken:
                return None  # its exit wakes the worker
            if record.state == TERMINATED:  # failed, and restartPolicy Never: the pod failed
                return None
            due = self.next_start.get(spec.name, 0.0) - loop.time()
            if due > 0:
                return due
            self._start(spec, record)
            self.sandbox.save(self.directory)
            return None
        for spec, record in zip(self.specs, self._records(), strict=True):
            if record.state == RUNNING or spec.name in self.broken:
                continue
            if record.state == TERMINATED and not should_restart(self.policy, record.exit_code):
                continue
            due = self.next_start.get(spec.name, 0.0) - loop.time()
            if due > 0:
                timeout = due if timeout is None else min(timeout, due)
                continue
            self._start(spec, record)
        self.sandbox.save(self.directory)
        return timeout

    def _start(self, spec: Container, record: ContainerRecord) -> None:
        assert self.sandbox is not None
        sandbox = self.sandbox
        argv = container_argv(spec)
        if not argv:
            self.broken.add(spec.name)
            record.state, record.reason = WAITING, "CreateContainerConfigError"
            record.message = "the lab runs no images: give the container a command"
            return
        try:
            node, host_ips = self.kubelet.node.name, self.kubelet.host_ips
            env = container_env(
                spec, self.pod, node, sandbox.ips, self.env_objects, host_ips=host_ips
            )
            pod_context = self.pod.spec.securityContext if self.pod.spec else None
            who = kubelet_exec.identity(spec, pod_context)
            mounts = self._mounts(spec)
        except (kubelet_exec.ContainerConfigError, volumes.VolumeError) as exc:
            # e.g. a ConfigMap not there yet: read the objects again and retry, as the kubelet
            log.warning("pod %s: container %s: %s", self.ref, spec.name, exc)
            record.state, record.reason, record.message = (
                WAITING,
                "CreateContainerConfigError",
                str(exc),
            )
            self.volumes_ready = False
            self.next_start[spec.name] = asyncio.get_running_loop().time() + CONFIG_RETRY
            return
        termination = volumes.termination_file(self.directory, spec.name)
        termination.write_bytes(b"")
        termination.chmod(0o666)  # any user of the container may leave its message
        argv = kubelet_exec.command(
            [kubelet_exec.expand(a, env) for a in argv], mounts, who, IMAGE_ROOT
        )
        cgroup = cgroups.create(Path(sandbox.cgroup) / spec.name)
        target = None if sandbox.host_network else sandbox.netns

        def place() -> None:  # in the child, before exec: the cgroup first, then the netns
            cgroups.join(cgroup)
            if target is not None:
                netns.enter(target)

        log_file: IO[bytes]
        with (self.directory / f"{spec.name}.log").open("ab") as log_file:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=spec.workingDir or str(self.directory),
                    preexec_fn=place,  # noqa: PLW1509 - only the waitpid threads of asyncio run
                    start_new_session=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("pod %s: container %s cannot start: %s", self.ref, spec.name, exc)
                record.started_at = record.started_at or now_rfc3339()
                self._exited(spec.name, record, 128, "StartError", str(exc))
                return
        if record.started_at:
            record.restarts += 1
        record.state, record.reason, record.message = RUNNING, "", ""
        record.container_id = f"{RUNTIME}://{uuid.uuid4().hex}"
        record.pid = proc.pid
        record.proc_start = state.start_time_of(proc.pid) or 0
        record.started_at = now_rfc3339()
        self.procs[spec.name] = proc
        self._watch(spec.name, record)
        record.probed = spec.readinessProbe is not None
        record.probe_ready = False
        if spec.readinessProbe is not None:
            self.probes[spec.name] = asyncio.create_task(
                self._probe(spec, record, spec.readinessProbe, env), name=f"probe {self.ref}"
            )
        log.info("pod %s: container %s started (pid %d)", self.ref, spec.name, proc.pid)

    def _mounts(self, spec: Container) -> list[volumes.Mount]:
        mounts = volumes.container_mounts(self.pod, spec, self.directory, self.kubelet.node_root)
        return volumes.mount_order([*mounts, *self._resolv_conf()])

    def _resolv_conf(self) -> list[volumes.Mount]:
        """The pod's resolv.conf (:mod:`smesh.lab.kubelet_dns`), written into its directory,
        as a bind over ``/etc/resolv.conf``; none where the pod keeps the node's file."""
        node_file = _read(RESOLV_CONF)
        text = kubelet_dns.resolv_conf(self.pod, services.DNS_IP, CLUSTER_DOMAIN, node_file)
        if text is None:
            return []
        if not os.path.isfile(RESOLV_CONF):  # no file to bind over: never make one on the host
            log.warning(
                "pod %s: %s is not a file; the pod keeps no DNS config", self.ref, RESOLV_CONF
            )
            return []
        path = self.directory / "resolv.conf"
        write_atomic(path, text.encode(), 0o644)
        return [volumes.Mount(str(path), RESOLV_CONF, read_only=False, is_file=True)]

    def _adopt_processes(self) -> None:
        """After a kubelet restart: watch the containers that still run, note the others."""
        for record in [*self._init_records(), *self._records()]:
            if record.state != RUNNING or record.name in self.watched:
                continue
            if record.pid and state.start_time_of(record.pid) == record.proc_start:
                self._watch(record.name, record)
                spec = self._spec(record.name)
                if spec is not None and spec.readinessProbe is not None and self.sandbox:
                    try:  # the objects of its environment are not read yet: what is known
                        env = container_env(spec, self.pod, self.kubelet.node.name, [])
                    except kubelet_exec.ContainerConfigError:
                        env = {"PATH": DEFAULT_PATH}
                    self.probes[spec.name] = asyncio.create_task(
                        self._probe(spec, record, spec.readinessProbe, env)
                    )
            else:
                self._exited(record.name, record, 255, "Unknown")

    def _watch(self, name: str, record: ContainerRecord) -> None:
        try:
            fd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            self._exited(name, record, 255, "Unknown")
            return
        self.watched[name] = fd
        asyncio.get_running_loop().add_reader(fd, self._on_exit, name, fd)

    def _on_exit(self, name: str, fd: int) -> None:
        asyncio.get_running_loop().remove_reader(fd)
        os.close(fd)
        self.watched.pop(name, None)
        proc = self.procs.pop(name, None)
        code = proc.wait() if proc is not None else None  # an adopted process: not our child
        assert self.sandbox is not None
        record = self.sandbox.containers[name]
        if code is None:
            self._exited(name, record, 255, "Unknown")
        else:
            self._exited(name, record, 128 - code if code < 0 else code)
        self.wake.set()

    def _exited(
        self,
        name: str,
        record: ContainerRecord,
        code: int,
        reason: str = "",
        message: str | None = None,
    ) -> None:
        """A container ended: terminated for good, or waiting for its restart after backoff."""
        ran = seconds_since(record.started_at) if record.state == RUNNING else 0.0
        probe = self.probes.pop(name, None)
        if probe is not None:
            probe.cancel()
        if message is None:
            message = self._termination_message(name, code)
        record.exited(code, reason or None, message)
        if self.deleting or self.removed:
            return
        log.info("pod %s: container %s exited with %d", self.ref, name, code)
        is_init = any(c.name == name for c in self.init_specs)
        if not should_restart(init_policy(self.policy) if is_init else self.policy, code):
            return
        record.crashes = crashes_after_exit(record.crashes, ran)
        delay = restart_delay(record.crashes)
        record.last_state = {TERMINATED: record.terminated()}
        record.state = WAITING
        record.reason = "CrashLoopBackOff"
        record.message = f"back-off {delay:.0f}s restarting failed container={name} pod={self.ref}"
        self.next_start[name] = asyncio.get_running_loop().time() + delay

    def _termination_message(self, name: str, code: int) -> str:
        """What the container left at its ``terminationMessagePath`` (or, with
        ``FallbackToLogsOnError`` and a failure, the tail of its log)."""
        with contextlib.suppress(OSError):
            data = volumes.termination_file(self.directory, name).read_bytes()
            if data:
                return data[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        spec = self._spec(name)
        if spec is None or spec.terminationMessagePolicy != "FallbackToLogsOnError" or code == 0:
            return ""
        with contextlib.suppress(OSError):
            lines = (self.directory / f"{name}.log").read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
            return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
        return ""

    async def _probe(
        self, spec: Container, record: ContainerRecord, probe: Probe, env: dict[str, str]
    ) -> None:
        """Run *probe* every ``periodSeconds`` while the container runs; flip its readiness
        after ``successThreshold`` successes or ``failureThreshold`` failures in a row."""
        assert self.sandbox is not None
        sandbox = self.sandbox
        pid = record.pid
        await asyncio.sleep(probe.initialDelaySeconds or 0)
        successes = failures = 0
        while True:
            ok, why = await kubelet_probe.run_probe(
                probe,
                spec,
                pid=pid,
                pod_ip=sandbox.ips[0] if sandbox.ips else "127.0.0.1",
                namespace=None if sandbox.host_network else sandbox.netns,
                env=env,
            )
            if ok:
                successes, failures = successes + 1, 0
                if not record.probe_ready and successes >= (probe.successThreshold or 1):
                    record.probe_ready = True
                    self.wake.set()
            else:
                successes, failures = 0, failures + 1
                if record.probe_ready and failures >= (probe.failureThreshold or 3):
                    log.info("pod %s: container %s not ready: %s", self.ref, spec.name, why)
                    record.probe_ready = False
                    self.wake.set()
            await asyncio.sleep(probe.periodSeconds or 10)

    async def _stop_containers(self, grace: int) -> None:
        """SIGTERM every container; SIGKILL (the whole pod cgroup) after *grace* seconds."""
        records = [
            r for r in [*self._init_records(), *self._records()] if r.state == RUNNING and r.pid
        ]
        for record in records:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.watched and loop.time() < deadline:
            await self.sleep(deadline - loop.time())
        if self.sandbox is not None:
            cgroups.kill_all(Path(self.sandbox.cgroup))
        deadline = loop.time() + 5
        while self.watched and loop.time() < deadline:
            await self.sleep(deadline - loop.time())

    # -- status -----------------------------------------------------------------------------

    async def _report(self) -> bool:
        """Patch the pod's status if it changed; whether the API has it now."""
        sandbox = self.sandbox
        status = pod_status(
            records=self._records(),
            sandbox_ready=bool(sandbox and sandbox.ready) or bool(sandbox and sandbox.released),
            host_ip=self.kubelet.host_ips[0],
            host_ips=self.kubelet.host_ips,
            pod_ips=sandbox.ips if sandbox else [],
            previous_conditions=self.conditions,
            start_time=self.start_time,
            init_records=self._init_records(),
        )
        if status == self.reported:
            return True
        try:
            await self.kubelet.writer.merge_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status}
            )
        except KubernetesError as exc:
            log.warning("pod %s: status update failed: %s", self.ref, exc)
            return False
        self.reported = status
        self.conditions = status["conditions"]
        return True


class Kubelet:
    """Registers node *node*, keeps it Ready, and runs its pods."""

    def __init__(self, topo: Topology, node: Node, *, node_root: bool = False) -> None:
        self.lab = topo.name
        self.node = node
        # A lab installed from the chart: node-local hostPaths and the CNI configuration
        # and plugins are the node's own (kubepaths.host_path), as the CNI installer of the
        # agent's DaemonSet writes them.
        self.node_root = kubepaths.node_root(topo.name, node.name) if node_root else None
        self.kubeconfig = kubepaths.kubelet_kubeconfig(topo.name, node.name)
        self.writer = KubeWriter(self.kubeconfig)
        self.pods_dir = kubepaths.pods_dir(topo.name, node.name)
        self.cgroup_mount = cgroups.v2_root()
        self.cgroup_root = f"/{node.cgroup}"
        self.cni_path = kubepaths.cni_bin_dir(topo.name)
        self.conf_dir: Path | None = None
        self.fixed_network: dict[str, Any] = {}
        if self.node_root is not None:
            self.cni_path = kubepaths.node_cni_bin_dir(topo.name, node.name)
            self.conf_dir = kubepaths.node_cni_conf_dir(topo.name, node.name)
        else:
            self.fixed_network = json.loads(kubepaths.conflist(topo.name, node.name).read_text())
        self.host_ips = [str(node.ip4), str(node.ip6)]
        self.control_netns = topo.control_netns
        self.workers: dict[str, PodWorker] = {}
        self.version = "v0.0.0"
        self.started = now_rfc3339()
        self.node_uid = ""

    def network(self) -> dict[str, Any]:
        """The node's CNI network, read for every call as a runtime does (the agent's CNI
        installer chains smesh-cni into it after the kubelet started)."""
        if self.conf_dir is None or self.node_root is None:
            return self.fixed_network
        network: dict[str, Any] = cni.node_view(cni.load_network(self.conf_dir), self.node_root)
        return network

    async def run(self) -> None:
        await self._register()
        tasks = [
            asyncio.create_task(self._every(LEASE_RENEW, self._renew_lease), name="lease"),
            asyncio.create_task(self._every(NODE_STATUS_PERIOD, self._node_status), name="status"),
            asyncio.create_task(self._pods(), name="pods"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in [*tasks, *(w.task for w in self.workers.values() if w.task)]:
                task.cancel()
            await self.writer.aclose()

    # -- node -------------------------------------------------------------------------------

    async def _register(self) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        while True:
            try:
                version = await self.writer.get("/version")
                self.version = str(version.get("gitVersion") or self.version)
                try:
                    created = await self.writer.create("/api/v1/nodes", self._node_object())
                except KubernetesError as exc:
                    if not is_status(exc, 409):
                        raise
                    created = await self.writer.get(f"/api/v1/nodes/{self.node.name}")
                self.node_uid = str((created.get("metadata") or {}).get("uid", ""))
                await self._node_status()
                await self._renew_lease()
            except KubernetesError as exc:
                delay = backoff.next_delay()
                log.warning(
                    "registering node %s failed (%s); retrying in %.1f s",
                    self.node.name,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
            else:
                log.info("node %s registered", self.node.name)
                self._route_from_control()
                return

    def _route_from_control(self) -> None:
        """Routes from the control plane's namespace to this node's pod CIDRs, so pods reach
        the API server (in-cluster clients) and it answers them: what a cloud's routes for
        each Node's podCIDR do on a real cluster (the lab's fabric has none)."""
        node = self.node
        for cidr, via in ((node.pod_cidr4, node.ip4), (node.pod_cidr6, node.ip6)):
            try:
                iproute.ip("route", "replace", str(cidr), "via", str(via), netns=self.control_netns)
            except LinuxError as exc:
                log.warning("no route from the control plane to %s: %s", cidr, exc)

    def _node_object(self) -> dict[str, Any]:
        node = self.node
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _arch(),
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": _arch(),
                },
            },
            "spec": {
                "podCIDR": str(node.pod_cidr4),
                "podCIDRs": [str(node.pod_cidr4), str(node.pod_cidr6)],
            },
        }

    def node_status(self) -> dict[str, Any]:
        now = now_rfc3339()
        resources = _allocatable()

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": self.started,
            }

        return {
            "addresses": [
                {"type": "InternalIP", "address": self.host_ips[0]},
                {"type": "InternalIP", "address": self.host_ips[1]},
                {"type": "Hostname", "address": self.node.name},
            ],
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                condition(
                    "Ready", "True", "KubeletReady", "the smesh lab kubelet is posting ready status"
                ),
            ],
            "nodeInfo": {
                "machineID": _read("/etc/machine-id"),
                "systemUUID": _read("/etc/machine-id"),
                "bootID": _read("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": platform.release(),
                "osImage": _os_image(),
                "containerRuntimeVersion": f"{RUNTIME}://1",
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": _arch(),
            },
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }

    async def _node_status(self) -> None:
        await self.writer.merge_patch(
            f"/api/v1/nodes/{self.node.name}/status", {"status": self.node_status()}
        )

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node.name}"
        spec = {
            "holderIdentity": self.node.name,
            "leaseDurationSeconds": LEASE_DURATION,
            "renewTime": now_micro(),
        }
        try:
            await self.writer.merge_patch(path, {"spec": spec})
        except KubernetesError as exc:
            if not is_status(exc, 404):
                raise
            owner = {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node.name,
                "uid": self.node_uid,
            }
            await self.writer.create(
                path.rpartition("/")[0],
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.node.name, "ownerReferences": [owner]},
                    "spec": spec,
                },
            )

    async def _every(self, period: float, action: Any) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await action()
            except KubernetesError as exc:
                log.warning("%s failed: %s", getattr(action, "__name__", action), exc)

    # -- pods -------------------------------------------------------------------------------

    async def _pods(self) -> None:
        leftovers = load_sandboxes(self.pods_dir)
        informer: Informer[Pod] = Informer(
            KubeApi.from_kubeconfig(self.kubeconfig),
            PODS,
            Selection(field_selector=f"spec.nodeName={self.node.name}"),
        )
        synced = False
        try:
            async for item in informer.events():
                if isinstance(item, Synced):
                    if not synced:
                        synced = True
                        for sandbox in leftovers.values():  # made for pods that are gone
                            await self._remove_leftover(sandbox)
                        leftovers.clear()
                    continue
                self._dispatch(item, leftovers)
        finally:
            await informer.api.aclose()

    def _dispatch(self, event: Event[Pod], leftovers: dict[str, Sandbox]) -> None:
        meta = event.obj.metadata
        uid = meta.uid if meta else None
        if not uid:
            return
        worker = self.workers.get(uid)
        if event.type is EventType.DELETED:
            if worker is not None:
                worker.gone()
            return
        if worker is not None:
            worker.update(event.obj)
            return
        worker = PodWorker(self, event.obj, leftovers.pop(uid, None))
        self.workers[uid] = worker
        worker.task = asyncio.create_task(worker.run(), name=f"pod {worker.ref}")

    async def _remove_leftover(self, sandbox: Sandbox) -> None:
        log.info(
            "removing the sandbox of %s/%s (%s): the pod is gone",
            sandbox.namespace,
            sandbox.name,
            sandbox.uid,
        )
        await self.release(sandbox)
        shutil.rmtree(self.pods_dir / sandbox.uid, ignore_errors=True)

    async def release(self, sandbox: Sandbox) -> None:
        """Everything of *sandbox* but its record: processes, addresses, netns, cgroup."""
        if sandbox.released:
            return
        path = Path(sandbox.cgroup)
        cgroups.kill_all(path)
        if not sandbox.host_network:
            try:
                call = cni_call(sandbox)
                prev = sandbox.cni_result or None
                await cni.delete(self.network(), call, self.cni_path, os.environ, prev)
            except LabError as exc:  # a plugin's error, or no network configuration to read
                log.warning("pod %s/%s: CNI DEL: %s", sandbox.namespace, sandbox.name, exc)
            if netns.exists(sandbox.netns):
                with contextlib.suppress(LinuxError):
                    iproute.ip("netns", "del", sandbox.netns)
        with contextlib.suppress(LinuxError, OSError):
            cgroups.remove_tree(path, kill=True)
        sandbox.ready = False
        sandbox.released = True

    async def request_token(
        self, namespace: str, account: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """A TokenRequest as the node (NodeRestriction: only for pods bound to it)."""
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        return await self.writer.create(path, body)

    async def delete_pod(self, worker: PodWorker) -> None:
        path = f"/api/v1/namespaces/{worker.namespace}/pods/{worker.name}"
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": worker.uid},
        }
        try:
            await self.writer.delete(path, body)
        except KubernetesError as exc:
            if not is_status(exc, 404, 409):
                log.warning("pod %s: delete failed: %s", worker.ref, exc)

    async def event(self, worker: PodWorker, kind: str, reason: str, message: str) -> None:
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{worker.name}.{uuid.uuid4().hex[:16]}",
                "namespace": worker.namespace,
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": worker.name,
                "namespace": worker.namespace,
                "uid": worker.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": "kubelet", "host": self.node.name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": "kubelet",
            "reportingInstance": self.node.name,
        }
        try:
            await self.writer.create(f"/api/v1/namespaces/{worker.namespace}/events", body)
        except KubernetesError as exc:
            log.warning("pod %s: posting event %s failed: %s", worker.ref, reason, exc)


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _rfc3339(value: datetime.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _allocatable() -> dict[str, str]:
    """The node's capacity (= allocatable): the machine's CPUs and memory."""
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_kib()}Ki",
        "pods": str(MAX_PODS),
    }


def _memory_kib() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 0


def _os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    return "Linux"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smesh.lab.kubelet")
    parser.add_argument("--lab", required=True)
    parser.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request otherwise
    lab = state.load(args.lab)
    if lab is None:
        parser.error(f"no lab named {args.lab!r}")
    topo = lab.topology()
    chart = lab.settings.get("install") == "chart"
    kubelet = Kubelet(topo, topo.node(args.node), node_root=chart)

    async def serve() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # SIGTERM ends the kubelet and leaves its pods running, as a real kubelet's restart.
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await kubelet.run()

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
