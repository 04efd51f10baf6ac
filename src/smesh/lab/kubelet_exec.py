"""How the lab kubelet starts a container: its mount namespace, user and capabilities.

There is no runtime and no image, so a container is the host's filesystem seen through a
mount namespace of its own, built by util-linux's tools around the container's command::

    unshare --mount --propagation slave -- sh -c 'MOUNTS; exec "$@"' sh \\
        setpriv --bounding-set=-all,+CAPS --inh-caps=-all [--reuid U --regid G ...] -- ARGV

``unshare`` makes every mount a slave of the host's (so a ``HostToContainer`` hostPath sees
the host's later mounts, and nothing the container mounts reaches the host); the script
bind-mounts the volumes at their ``mountPath`` (creating an empty mount point on the host
if there is none, as a runtime does in a rootfs); ``setpriv`` sets the capability bounding
set (and, for root, thereby the effective set) and the user, as ``runc`` does. Every step
``exec``s the next, so the kubelet's pid is the container's. The namespace ends with the
container's last process, and with it every mount: the host's mount table never changes.

Building that command line is pure (:func:`command`); the kubelet runs it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lightkube.models.core_v1 import Container, PodSecurityContext, SecurityContext

from smesh.lab.errors import LabError
from smesh.lab.kubelet_volumes import Mount, under

#: Linux capabilities by number (capability.h), as the API names them without ``CAP_``.
CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
#: What containerd and CRI-O give a container that asks for nothing (containerd's defaults).
DEFAULT_CAPABILITIES = frozenset(
    [
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "MKNOD",
        "NET_RAW",
        "SETGID",
        "SETUID",
        "SETFCAP",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    ]
)


class ContainerConfigError(LabError):
    """The container cannot be started as specified (``CreateContainerConfigError``)."""


@dataclass(frozen=True)
class Identity:
    """The user, groups and capabilities a container's process runs with."""

    capabilities: frozenset[str]
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    no_new_privs: bool = False
    privileged: bool = False


def _cap_name(name: str) -> str:
    bare = name.upper().removeprefix("CAP_")
    if bare != "ALL" and bare not in CAPABILITIES:
        raise ContainerConfigError(f"unknown capability {name!r}")
    return bare


def capabilities(context: SecurityContext | None) -> frozenset[str]:
    """The bounding set: the runtime's defaults, minus ``drop``, plus ``add`` (``ALL`` too)."""
    caps = set(DEFAULT_CAPABILITIES)
    if context is None:
        return frozenset(caps)
    if context.privileged:
        return frozenset(CAPABILITIES)
    wanted = context.capabilities
    if wanted is not None:
        for name in wanted.drop or []:
            bare = _cap_name(name)
            if bare == "ALL":
                caps.clear()
            else:
                caps.discard(bare)
        for name in wanted.add or []:
            bare = _cap_name(name)
            if bare == "ALL":
                caps.update(CAPABILITIES)
            else:
                caps.add(bare)
    return frozenset(caps)


def identity(spec: Container, pod: PodSecurityContext | None) -> Identity:
    """The container's :class:`Identity`; the container's context wins over the pod's."""
    context = spec.securityContext
    uid = context.runAsUser if context and context.runAsUser is not None else None
    if uid is None and pod is not None:
        uid = pod.runAsUser
    gid = context.runAsGroup if context and context.runAsGroup is not None else None
    if gid is None and pod is not None:
        gid = pod.runAsGroup
    non_root = context.runAsNonRoot if context and context.runAsNonRoot is not None else None
    if non_root is None and pod is not None:
        non_root = pod.runAsNonRoot
    if non_root and not uid:  # no image, no image user: an unset runAsUser means root
        raise ContainerConfigError(
            "container has runAsNonRoot and image will run as root "
            f"(container {spec.name!r}: set securityContext.runAsUser to a non-zero uid)"
        )
    groups = list((pod.supplementalGroups if pod else None) or [])
    if pod is not None and pod.fsGroup is not None:
        groups.append(pod.fsGroup)
    return Identity(
        capabilities=capabilities(context),
        uid=uid,
        gid=gid,
        groups=tuple(groups),
        no_new_privs=bool(context and context.allowPrivilegeEscalation is False),
        privileged=bool(context and context.privileged),
    )


def setpriv_argv(who: Identity) -> list[str]:
    if who.privileged:
        argv = ["setpriv"]
    else:
        caps = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(who.capabilities))])
        argv = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all"]
    if who.uid is not None or who.gid is not None or who.groups:
        argv.append(f"--reuid={who.uid or 0}")
        argv.append(f"--regid={who.gid if who.gid is not None else 0}")
        if who.groups:
            argv.append("--groups=" + ",".join(str(g) for g in who.groups))
        else:
            argv.append("--clear-groups")
    if who.no_new_privs:
        argv.append("--no-new-privs")
    return [*argv, "--"]


def hides(mounts: Sequence[Mount], path: str) -> bool:
    """Whether one of *mounts* lands on *path* or on a directory above it."""
    return any(under(path, m.target) for m in mounts)


def mount_script(mounts: Sequence[Mount], image_root: str | None = None) -> str:
    """The shell lines that make *mounts*, then ``exec "$@"``; any failure ends the start.

    *image_root* (the checkout standing in for the image) stays visible: a volume mounted
    over a parent of it (an emptyDir at /tmp, the checkout a clone in /tmp/...) would hide
    what the container runs, as no volume hides a real image's own files. It is held open
    (fd 9) before the mounts and bound back, read-only, after them.
    """
    keep = image_root is not None and hides(mounts, image_root)
    lines = ["set -e"]
    if keep:
        lines.append(f"exec 9< {shlex.quote(str(image_root))}")
    for mount in mounts:
        source, target = shlex.quote(mount.source), shlex.quote(mount.target)
        if mount.is_file:
            parent = shlex.quote(mount.target.rpartition("/")[0] or "/")
            lines.append(f"[ -e {target} ] || {{ mkdir -p {parent}; : > {target}; }}")
        else:
            lines.append(f"mkdir -p {target}")
        lines.append(f"mount --rbind {source} {target}")
        lines.append(f"mount --make-r{mount.propagation.removeprefix('r')} {target}")
        if mount.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    if keep:
        root = shlex.quote(str(image_root))
        lines.append(f"mkdir -p {root}")
        lines.append(f"mount --no-canonicalize --rbind /proc/self/fd/9 {root}")
        lines.append(f"mount -o remount,bind,ro {root}")
        lines.append("exec 9<&-")
    lines.append('exec "$@"')
    return "\n".join(lines)


def command(
    argv: Sequence[str], mounts: Sequence[Mount], who: Identity, image_root: str | None = None
) -> list[str]:
    """The whole command line the kubelet executes for a container."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "slave",
        "--",
        "sh",
        "-c",
        mount_script(mounts, image_root),
        "sh",
        *setpriv_argv(who),
        *argv,
    ]


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of ``command``/``args``: a defined variable of the
    container's environment is replaced, an undefined reference stays as written, and
    ``$$`` is a literal ``$`` (so ``$$(VAR)`` stays ``$(VAR)``). The chart's agent relies on
    it: ``--set node=$(NODE_NAME)``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env[name] if name in env else text[i : end + 1])
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)
