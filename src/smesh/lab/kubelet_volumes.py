"""The lab kubelet's volumes: files from the API written per pod, and each container's mounts.

A real kubelet makes a directory per volume under the pod's directory and the runtime
bind-mounts it at the container's ``mountPath``. The lab does the same without images: the
container sees the host's filesystem in a mount namespace of its own
(:mod:`smesh.lab.kubelet_exec`), with these bind mounts on top.

- ``configMap``, ``secret``, ``downwardAPI`` and ``projected`` volumes are files the kubelet
  writes once, before the first container starts (the kubelet reads the objects as the
  node, which the Node authorizer allows for objects a pod bound to it references). They are
  not rewritten when the object changes, except the ServiceAccount tokens.
- A projected ``serviceAccountToken`` comes from the TokenRequest API, bound to the pod
  (``boundObjectRef`` kind Pod, name and UID), and is renewed at 80 % of its life, as the
  kubelet's token manager does. The ServiceAccount admission plugin gives every pod (unless
  ``automountServiceAccountToken: false``) the projected volume ``kube-api-access-*``:
  token (3607 s), ``ca.crt`` from ConfigMap ``kube-root-ca.crt`` and ``namespace``, so a
  pod's in-cluster configuration comes out of this module unchanged.
- ``emptyDir`` is a directory of the pod (``medium: Memory`` too: no tmpfs); ``hostPath``
  is the host's path, with the ``type`` checks of the kubelet.

Rendering (what files a source yields) is pure; :func:`write_volumes` does the I/O.
"""

from __future__ import annotations

import base64
import datetime
import functools
import json
import math
import os
import posixpath
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube.models.core_v1 import (
    Container,
    DownwardAPIVolumeFile,
    KeyToPath,
    Volume,
)
from lightkube.resources.core_v1 import Pod

from smesh.kubernetes.writer import is_status
from smesh.lab.errors import LabError
from smesh.lab.kubepaths import host_path
from smesh.linux.files import write_atomic

#: The kubelet renews a token once 80 % of its life has passed.
TOKEN_REFRESH_FRACTION = 0.8
#: The default ``expirationSeconds`` of a projected token (the API's default).
DEFAULT_TOKEN_SECONDS = 3600
DEFAULT_MODE = 0o644
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

#: An API getter: the JSON object at a path (raises on a status error).
Getter = Callable[[str], Awaitable[dict[str, Any]]]
#: A TokenRequest: (namespace, service account, request body) → the TokenRequest's answer.
TokenCreator = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class VolumeError(LabError):
    """A volume cannot be set up (its object is missing, a hostPath fails its type check);
    the pod's containers wait, and the message is the ``FailedMount`` event's."""


class NotFound(VolumeError):
    """A referenced ConfigMap or Secret does not exist."""


@dataclass(frozen=True)
class Mount:
    """One bind mount of a container: host *source* at *target*."""

    source: str
    target: str
    read_only: bool
    propagation: str = "private"  # private | rslave (HostToContainer) | rshared
    is_file: bool = False


@dataclass(frozen=True)
class File:
    path: str  # relative to the volume's directory
    data: bytes
    mode: int


@dataclass(frozen=True)
class TokenSource:
    """A projected ServiceAccount token: where it goes and what to ask for."""

    volume: str
    path: str
    audience: str
    seconds: int
    mode: int


def volume_dir(pod_dir: Path, name: str) -> Path:
    return pod_dir / "volumes" / name


def termination_file(pod_dir: Path, container: str) -> Path:
    return pod_dir / f"{container}.termination-log"


def _safe_relative(path: str, what: str) -> str:
    """*path* as a relative path that stays inside its volume (no ``..``, not absolute)."""
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise VolumeError(f"{what} {path!r} must be a relative path without '..'")
    return posixpath.normpath(path)


def _mode(mode: int | None, default: int | None) -> int:
    if mode is not None:
        return mode
    return default if default is not None else DEFAULT_MODE


def key_files(
    data: Mapping[str, bytes],
    items: list[KeyToPath] | None,
    default_mode: int | None,
    what: str,
    optional: bool,
) -> list[File]:
    """The files of a ConfigMap's or Secret's *data* (all keys, or only *items*)."""
    if not items:
        return [
            File(_safe_relative(k, "key"), v, _mode(None, default_mode)) for k, v in data.items()
        ]
    files = []
    for item in items:
        if item.key not in data:
            if optional:
                continue
            raise VolumeError(f"{what} has no key {item.key!r}")
        path = _safe_relative(item.path, "path")
        files.append(File(path, data[item.key], _mode(item.mode, default_mode)))
    return files


def configmap_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    return data


def secret_data(obj: Mapping[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}


def quote(value: str) -> str:
    """A value as the kubelet writes labels and annotations (Go's ``%q``, close enough)."""
    return json.dumps(value, ensure_ascii=False)


def field_value(
    pod: Pod,
    path: str,
    node: str = "",
    pod_ips: list[str] | None = None,
    host_ips: list[str] | None = None,
) -> str:
    """A ``fieldRef`` of the downward API (file or environment)."""
    meta = pod.metadata
    spec = pod.spec
    labels = (meta.labels if meta else None) or {}
    annotations = (meta.annotations if meta else None) or {}
    for prefix, values in (("metadata.labels", labels), ("metadata.annotations", annotations)):
        if path == prefix:
            return "\n".join(f"{k}={quote(v)}" for k, v in sorted(values.items()))
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(values.get(path[len(prefix) + 2 : -2], ""))
    ips = pod_ips or []
    fields = {
        "metadata.name": (meta.name if meta else None) or "",
        "metadata.namespace": (meta.namespace if meta else None) or "",
        "metadata.uid": (meta.uid if meta else None) or "",
        "spec.nodeName": node or ((spec.nodeName if spec else None) or ""),
        "spec.serviceAccountName": (spec.serviceAccountName if spec else None) or "",
        "status.podIP": ips[0] if ips else "",
        "status.podIPs": ",".join(ips),
        "status.hostIP": (host_ips or [""])[0],
        "status.hostIPs": ",".join(host_ips or []),
    }
    if path not in fields:
        raise VolumeError(f"fieldRef {path!r} is not supported by the lab kubelet")
    return fields[path]


def downward_files(
    pod: Pod, items: list[DownwardAPIVolumeFile] | None, default_mode: int | None, node: str
) -> list[File]:
    files = []
    for item in items or []:
        path = _safe_relative(item.path, "path")
        if item.fieldRef is None:
            raise VolumeError(f"downwardAPI item {item.path!r}: only fieldRef is supported")
        value = field_value(pod, item.fieldRef.fieldPath, node)
        files.append(File(path, value.encode(), _mode(item.mode, default_mode)))
    return files


def token_sources(pod: Pod) -> list[TokenSource]:
    """Every projected ServiceAccount token of *pod*."""
    found = []
    for volume in (pod.spec.volumes if pod.spec else None) or []:
        if volume.projected is None:
            continue
        for source in volume.projected.sources or []:
            token = source.serviceAccountToken
            if token is None:
                continue
            found.append(
                TokenSource(
                    volume=volume.name,
                    path=_safe_relative(token.path, "path"),
                    audience=token.audience or "",
                    seconds=token.expirationSeconds or DEFAULT_TOKEN_SECONDS,
                    mode=_mode(None, volume.projected.defaultMode),
                )
            )
    return found


def token_request(pod: Pod, source: TokenSource) -> dict[str, Any]:
    """The TokenRequest a kubelet files for *source*: bound to the pod, so it dies with it."""
    assert pod.metadata is not None
    spec: dict[str, Any] = {
        "expirationSeconds": source.seconds,
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod.metadata.name,
            "uid": pod.metadata.uid,
        },
    }
    if source.audience:
        spec["audiences"] = [source.audience]
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}


def refresh_after(issued: datetime.datetime, expires: datetime.datetime) -> float:
    """Seconds after *issued* at which a token that lives until *expires* is renewed."""
    return max(1.0, (expires - issued).total_seconds() * TOKEN_REFRESH_FRACTION)


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


_SUFFIXES = {
    "m": 0.001,
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def quantity(text: str) -> float:
    """A resource quantity (``500m``, ``128Mi``, ``1e3``) as a number."""
    text = text.strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            number, scale = text[: -len(suffix)], _SUFFIXES[suffix]
            break
    else:
        number, scale = text, 1
    try:
        return float(number) * scale
    except ValueError:
        raise VolumeError(f"{text!r} is not a resource quantity") from None


def resource_value(
    spec: Container, resource: str, divisor: str | None, allocatable: Mapping[str, str]
) -> str:
    """A ``resourceFieldRef``: the container's request or limit (a limit not set is the
    node's allocatable, as the kubelet says), divided by *divisor* and rounded up."""
    kind, _, name = resource.partition(".")
    if kind not in {"requests", "limits"} or name not in {"cpu", "memory", "ephemeral-storage"}:
        raise VolumeError(f"resourceFieldRef {resource!r} is not supported by the lab kubelet")
    resources = spec.resources
    values = (getattr(resources, kind) if resources else None) or {}
    if name in values:
        value = quantity(str(values[name]))
    elif kind == "limits":
        value = quantity(allocatable.get(name, "0"))
    else:
        value = 0.0
    scale = quantity(divisor or "1")
    if scale <= 0:
        raise VolumeError(f"resourceFieldRef {resource!r}: divisor must be positive")
    return str(math.ceil(value / scale - 1e-9))


# -- mounts ----------------------------------------------------------------------------------

_API_VOLUMES = ("configMap", "secret", "downwardAPI", "projected")
_PROPAGATION = {
    None: "private",
    "None": "private",
    "HostToContainer": "rslave",
    "Bidirectional": "rshared",
}


def container_mounts(
    pod: Pod, spec: Container, pod_dir: Path, host_root: Path | None = None
) -> list[Mount]:
    """*spec*'s bind mounts, parents before children, then its termination message file
    (a ``subPath`` of an emptyDir or hostPath that does not exist is made a directory).

    With *host_root* (the node's root), a node-local hostPath is that node's own copy
    (:func:`smesh.lab.kubepaths.host_path`)."""
    volumes: dict[str, Volume] = {v.name: v for v in (pod.spec.volumes if pod.spec else None) or []}
    mounts = []
    for vm in spec.volumeMounts or []:
        volume = volumes.get(vm.name)
        if volume is None:
            raise VolumeError(f"volumeMount {vm.mountPath!r} names no volume {vm.name!r}")
        if not vm.mountPath.startswith("/"):
            raise VolumeError(f"mountPath {vm.mountPath!r} must be absolute")
        if volume.hostPath is not None:
            source = _host(volume.hostPath.path, host_root)
            propagation = _PROPAGATION.get(vm.mountPropagation, "private")
        elif volume.emptyDir is not None or any(getattr(volume, k) for k in _API_VOLUMES):
            source = str(volume_dir(pod_dir, volume.name))
            propagation = "private"
        else:
            raise VolumeError(
                f"volume {volume.name!r}: only hostPath, emptyDir, configMap, "
                "secret, downwardAPI and projected are supported by the lab"
            )
        api = any(getattr(volume, k) for k in _API_VOLUMES)
        if vm.subPath:
            source = posixpath.join(source, _safe_relative(vm.subPath, "subPath"))
            if not api and not os.path.lexists(source):
                os.makedirs(source, exist_ok=True)  # as the kubelet: a missing subPath is a dir
        mounts.append(
            Mount(
                source=source,
                target=posixpath.normpath(vm.mountPath),
                read_only=bool(vm.readOnly) or api,  # the kubelet mounts API data read-only
                propagation=propagation,
                is_file=bool(vm.subPath) and os.path.exists(source) and not os.path.isdir(source),
            )
        )
    target = spec.terminationMessagePath or DEFAULT_TERMINATION_PATH
    mounts.append(
        Mount(str(termination_file(pod_dir, spec.name)), target, read_only=False, is_file=True)
    )
    return mount_order(mounts)


def under(path: str, directory: str) -> bool:
    """Whether *path* is *directory* or lies below it (paths as strings, absolute)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def mount_order(mounts: Sequence[Mount]) -> list[Mount]:
    """*mounts* in an order that makes each one as meant: a parent target before the targets
    inside it, and a mount whose source lies inside another mount's target before that
    mount hides the source (the lab's state, where pod volumes live, is under /run/smesh,
    which the agent's pod mounts from its node root). Otherwise shallow targets first, in
    the pod's order."""
    pending = sorted(mounts, key=lambda m: m.target.count("/"))
    ordered: list[Mount] = []
    while pending:
        for index, mount in enumerate(pending):
            others = pending[:index] + pending[index + 1 :]
            blocked = any(
                (under(mount.target, o.target) and o.target != mount.target)
                or under(o.source, mount.target)
                for o in others
            )
            if not blocked:
                break
        else:
            index = 0  # a cycle (a source inside its own subtree's target): depth order
        ordered.append(pending.pop(index))
    return ordered


def _host(path: str, host_root: Path | None) -> str:
    return path if host_root is None else host_path(host_root, path)


def check_host_path(path: str, kind: str | None) -> None:
    """The kubelet's ``hostPath.type`` checks; the ``...OrCreate`` types create the path."""
    kind = kind or ""
    if kind == "DirectoryOrCreate":
        os.makedirs(path, mode=0o755, exist_ok=True)
        kind = "Directory"
    elif kind == "FileOrCreate":
        if not os.path.exists(path):
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
            os.close(fd)
        kind = "File"
    if not kind:
        return
    tests: dict[str, Callable[[int], bool]] = {
        "Directory": stat.S_ISDIR,
        "File": stat.S_ISREG,
        "Socket": stat.S_ISSOCK,
        "CharDevice": stat.S_ISCHR,
        "BlockDevice": stat.S_ISBLK,
    }
    test = tests.get(kind)
    if test is None:
        raise VolumeError(f"hostPath type {kind!r} is not supported")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise VolumeError(f"hostPath type check failed: {path} does not exist") from None
    if not test(mode):
        raise VolumeError(f"hostPath type check failed: {path} is not a {kind}")


# -- writing -----------------------------------------------------------------------------------


async def _object(get: Getter, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
    except Exception as exc:
        if is_status(exc, 404):
            return None
        raise


async def volume_files(pod: Pod, volume: Volume, get: Getter, node: str) -> list[File]:
    """The files of one API-backed volume, tokens excepted (:func:`write_token` writes them)."""
    namespace = (pod.metadata.namespace if pod.metadata else None) or "default"

    async def keyed(
        kind: str,
        data: Callable[[Any], dict[str, bytes]],
        name: str,
        items: Any,
        mode: int | None,
        *,
        optional: bool,
    ) -> list[File]:
        label = f'{kind} "{name}"'
        obj = await _object(get, f"{kind}s", namespace, name)
        if obj is None:
            if optional:
                return []
            raise NotFound(f"{label} not found")
        return key_files(data(obj), items, mode, label, optional)

    configmap = functools.partial(keyed, "configmap", configmap_data)
    secret = functools.partial(keyed, "secret", secret_data)

    if volume.configMap is not None:
        source = volume.configMap
        return await configmap(
            source.name or "", source.items, source.defaultMode, optional=bool(source.optional)
        )
    if volume.secret is not None:
        s = volume.secret
        return await secret(s.secretName or "", s.items, s.defaultMode, optional=bool(s.optional))
    if volume.downwardAPI is not None:
        return downward_files(pod, volume.downwardAPI.items, volume.downwardAPI.defaultMode, node)
    files: list[File] = []
    if volume.projected is not None:
        mode = volume.projected.defaultMode
        for part in volume.projected.sources or []:
            if part.configMap is not None:
                c = part.configMap
                files += await configmap(c.name or "", c.items, mode, optional=bool(c.optional))
            elif part.secret is not None:
                s2 = part.secret
                files += await secret(s2.name or "", s2.items, mode, optional=bool(s2.optional))
            elif part.downwardAPI is not None:
                files += downward_files(pod, part.downwardAPI.items, mode, node)
            elif part.serviceAccountToken is None:
                raise VolumeError(f"volume {volume.name!r}: unsupported projected source")
    return files


def _write(directory: Path, file: File) -> None:
    path = directory / file.path
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, file.data)
    path.chmod(file.mode)


async def write_volumes(
    pod: Pod, pod_dir: Path, get: Getter, node: str, host_root: Path | None = None
) -> None:
    """Make every volume of *pod* but its tokens: directories, host paths, API files."""
    for volume in (pod.spec.volumes if pod.spec else None) or []:
        if volume.hostPath is not None:
            check_host_path(_host(volume.hostPath.path, host_root), volume.hostPath.type)
            continue
        directory = volume_dir(pod_dir, volume.name)
        directory.mkdir(parents=True, exist_ok=True)
        if volume.emptyDir is not None:
            directory.chmod(0o777)  # as the kubelet: any user of the pod may write
            continue
        for file in await volume_files(pod, volume, get, node):
            _write(directory, file)


async def write_token(pod: Pod, pod_dir: Path, source: TokenSource, create: TokenCreator) -> float:
    """Request *source*'s token, write it; the seconds until it is to be renewed."""
    assert pod.metadata is not None
    assert pod.spec is not None
    account = pod.spec.serviceAccountName or "default"
    answer = await create(pod.metadata.namespace or "default", account, token_request(pod, source))
    status = answer.get("status") or {}
    token = str(status.get("token") or "")
    if not token:
        raise VolumeError(f"TokenRequest for serviceaccount {account!r} returned no token")
    now = datetime.datetime.now(datetime.UTC)
    try:
        expires = parse_time(str(status.get("expirationTimestamp")))
    except ValueError:
        expires = now + datetime.timedelta(seconds=source.seconds)
    _write(volume_dir(pod_dir, source.volume), File(source.path, token.encode(), source.mode))
    return refresh_after(now, expires)
