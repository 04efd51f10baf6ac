"""Capability checks done up front, so a missing privilege is one clear line, not a traceback."""

from __future__ import annotations

from pathlib import Path

from smesh.linux.errors import PermissionMissing

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_BPF = 39

_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_BPF: "CAP_BPF"}


def effective_capabilities(status_text: str | None = None) -> int:
    """The CapEff bit mask of this process (from /proc/self/status unless given)."""
    text = status_text if status_text is not None else Path("/proc/self/status").read_text()
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise PermissionMissing("cannot read this process's capabilities from /proc/self/status")


def require(action: str, caps: tuple[int, ...] = (CAP_SYS_ADMIN, CAP_NET_ADMIN)) -> None:
    """Raise :class:`PermissionMissing` unless every capability in *caps* is effective."""
    have = effective_capabilities()
    missing = [_NAMES.get(cap, str(cap)) for cap in caps if not have & (1 << cap)]
    if missing:
        raise PermissionMissing(
            f"{action} needs root ({', '.join(missing)} missing): run it as root"
        )
