"""What the node agent sees of capture, whichever backend does the work.

One :class:`NodeCapture` per node, opened once; pods are added and removed as they come
and go. :func:`select_mode` decides between eBPF and the nftables fallback by probing
what the running kernel actually accepts.
"""

from __future__ import annotations

import ipaddress
import logging
import platform
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal, Protocol, Self

from smesh.capture import abi
from smesh.capture.errors import CaptureConfigError, CaptureError
from smesh.errors import SmeshError
from smesh.linux import cgroups

log = logging.getLogger(__name__)

Mode = Literal["ebpf", "nftables"]
RequestedMode = Literal["auto", "ebpf", "nftables"]
MODES: tuple[RequestedMode, ...] = ("auto", "ebpf", "nftables")


@dataclass(frozen=True)
class CapturedPod:
    """A pod whose outbound connects are captured."""

    pod_id: str  # the caller's stable key (the agent uses namespace/name)
    name: str  # what trace and status print
    slot: int  # small number naming the pod in maps, pins and events (0 for nftables)
    netns: str | None
    cgroup: Path | None
    ipv4: ipaddress.IPv4Address | None = None
    ipv6: ipaddress.IPv6Address | None = None
    netns_cookie: int = 0


@dataclass(frozen=True)
class PodCounters:
    """Connects seen from one pod since it was added, by outcome."""

    captured: int = 0
    pass_not_mesh: int = 0
    pass_port: int = 0
    pass_loopback: int = 0
    pass_self: int = 0
    pass_not_tcp: int = 0
    denied: int = 0
    map_full: int = 0
    tracked: int = 0
    handed_over: int = 0
    events_dropped: int = 0
    plaintext_refused: int = 0

    @classmethod
    def from_values(cls, values: list[int]) -> PodCounters:
        names = [c.name.lower() for c in abi.Counter]
        return cls(**dict(zip(names, values, strict=True)))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Occupancy:
    """How full the node's capture state is: what must return to baseline."""

    mode: Mode
    connections: int  # eBPF: entries in the connection map; nftables: conntrack entries
    connections_capacity: int
    pods: int
    pods_capacity: int


class NodeCapture(Protocol):
    """Capture for every meshed pod of one node. Open once; close keeps it in place."""

    @property
    def mode(self) -> Mode: ...

    def open(self) -> None:
        """Load (or take over what an earlier owner left pinned) and apply the config."""

    def attach_proxy(self, cgroup: Path) -> None:
        """Answer SO_ORIGINAL_DST for sockets of *cgroup* (the agent's own cgroup)."""

    def detach_proxy(self, cgroup: Path) -> None: ...

    def add_pod(
        self,
        pod_id: str,
        name: str,
        cgroup: Path,
        netns: str,
        *,
        ipv4: ipaddress.IPv4Address | None = None,
        ipv6: ipaddress.IPv6Address | None = None,
    ) -> CapturedPod:
        """Start capturing the pod's outbound TCP; idempotent (re-adding updates it)."""

    def remove_pod(self, pod_id: str) -> bool:
        """Stop capturing the pod and forget its state; False if it was not captured."""

    def pods(self) -> list[CapturedPod]: ...

    def counters(self, pod_id: str) -> PodCounters: ...

    def occupancy(self) -> Occupancy: ...

    def detach_all(self) -> None:
        """Remove every attachment and all pinned state: the pods go back to normal."""

    def close(self) -> None:
        """Release this process's handles; attachments stay (fail closed until taken over)."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class ModeChoice:
    mode: Mode
    reason: str


def probe_ebpf(objects_dir: Path | None = None) -> str | None:
    """Why eBPF capture cannot work here, or None when every object loads in this kernel.

    Loading is the honest probe: it exercises the program types, helpers, map types and
    permissions capture needs, on this very kernel, without attaching anything.
    """
    from smesh.capture import libbpf  # noqa: PLC0415 - libbpf1 is only needed for eBPF

    try:
        cgroups.v2_root()
        for stem in abi.OBJECTS:
            with libbpf.BpfObject(abi.object_path(stem, objects_dir)) as obj:
                obj.map(abi.MapName.CONNS).set_max_entries(16)  # a probe needs no room
                obj.load()
    except SmeshError as exc:
        return str(exc)
    return None


def probe_nftables() -> str | None:
    """Why the nftables fallback cannot work here, or None."""
    if shutil.which("nft") is None:
        return "the `nft` command is not installed (Debian: apt install nftables)"
    proc = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"`nft list tables` failed: {proc.stderr.strip() or proc.returncode}"
    return None


def select_mode(requested: str, objects_dir: Path | None = None) -> ModeChoice:
    """The backend to use for *requested* (auto, ebpf or nftables), with the reason."""
    if requested not in MODES:
        raise CaptureConfigError(f"capture mode {requested!r}: use one of {', '.join(MODES)}")
    kernel = platform.release()
    if requested == "nftables":
        problem = probe_nftables()
        if problem:
            raise CaptureError(f"nftables capture is not possible here: {problem}")
        log.info("capture mode nftables: requested")
        return ModeChoice("nftables", "requested")
    problem = probe_ebpf(objects_dir)
    if problem is None:
        how = "requested" if requested == "ebpf" else "auto"
        choice = ModeChoice("ebpf", f"{how}: every BPF program loads on kernel {kernel}")
        log.info("capture mode ebpf: %s", choice.reason)
        return choice
    if requested == "ebpf":
        raise CaptureError(f"eBPF capture is not possible here: {problem}")
    fallback = probe_nftables()
    if fallback:
        raise CaptureError(f"no capture mode works here: eBPF: {problem}; nftables: {fallback}")
    choice = ModeChoice("nftables", f"auto: eBPF unavailable on kernel {kernel} ({problem})")
    log.warning("capture falls back to nftables: %s", problem)
    return choice
