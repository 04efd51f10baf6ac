"""The pin directory of one node: what survives the owner, and how to read or remove it.

Layout (all on bpffs, which holds only BPF objects and directories)::

    PIN_DIR/maps/smesh_*          every map (config, pods, pod names, connections, ...)
    PIN_DIR/pods/SLOT/PROGRAM     the links attaching each pod's programs to its cgroup
    PIN_DIR/proxy/CGROUP_ID/PROGRAM   the links on the proxy's cgroup

A pinned link keeps its program attached after the owner dies, so captured connects keep
going to the (now absent) listener and are refused: fail closed, never plaintext.
Unlinking a pin drops the kernel's last reference once no process holds the link, which
detaches it; :func:`detach` also forces the detach (BPF_LINK_DETACH) so that it works
while an owner is still running. The pod names live in the ``smesh_pod_meta`` map: bpffs
refuses regular files, and a map goes away with the pins, never left stale beside them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smesh.capture import abi, libbpf
from smesh.capture.errors import BpfError, CaptureError
from smesh.capture.node import CapturedPod, Occupancy, PodCounters
from smesh.closing import Closing


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    def map(self, name: str) -> Path:
        return self.maps / name

    def pod_dir(self, slot: int) -> Path:
        return self.root / "pods" / str(slot)

    def proxy_dir(self, cgroup_id: int) -> Path:
        return self.root / "proxy" / str(cgroup_id)

    def link_pins(self) -> Iterator[Path]:
        for kind in ("pods", "proxy"):
            base = self.root / kind
            if base.is_dir():
                for owner in sorted(base.iterdir()):
                    if owner.is_dir():
                        yield from sorted(owner.iterdir())

    def exists(self) -> bool:
        return self.map(abi.MapName.POD_META).exists()


def text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class MapSet:
    """Typed handles on the node's maps, from a loaded object or from the pins."""

    def __init__(self, fds: dict[str, int], owned: bool) -> None:
        self._owned = owned
        self.config = libbpf.Map.of(abi.CONFIG_MAP, fds, owned)
        self.cidrs = libbpf.Map.of(abi.CIDRS_MAP, fds, owned)
        self.ports = libbpf.Map.of(abi.PORTS_MAP, fds, owned)
        self.plain_ports = libbpf.Map.of(abi.PLAIN_PORTS_MAP, fds, owned)
        self.pods = libbpf.Map.of(abi.PODS_MAP, fds, owned)
        self.meta = libbpf.Map.of(abi.POD_META_MAP, fds, owned)
        self.conns = libbpf.Map.of(abi.CONNS_MAP, fds, owned)
        self.counters = libbpf.PerCpuArray(
            fds[abi.MapName.COUNTERS], abi.Counters, abi.MapName.COUNTERS, owned
        )

    @classmethod
    def pinned(cls, layout: Layout) -> MapSet:
        names = (
            abi.MapName.CONFIG,
            abi.MapName.CIDRS,
            abi.MapName.PORTS,
            abi.MapName.PLAIN_PORTS,
            abi.MapName.PODS,
            abi.MapName.POD_META,
            abi.MapName.CONNS,
            abi.MapName.COUNTERS,
        )
        fds: dict[str, int] = {}
        try:
            for name in names:
                fds[name] = libbpf.obj_get(layout.map(name))
        except BpfError:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise
        maps = cls(fds, owned=True)
        maps.check_layout()
        return maps

    def check_layout(self) -> None:
        for handle in (self.config, self.pods, self.meta, self.conns):
            info = libbpf.map_info(handle.fd)
            want = (ctypes.sizeof(handle.key_type), ctypes.sizeof(handle.value_type))
            if (info.key_size, info.value_size) != want:
                raise CaptureError(
                    f"pinned map {handle.name} was made by a different smesh "
                    f"(key/value {info.key_size}/{info.value_size}, expected {want[0]}/"
                    f"{want[1]}); run `smesh capture detach` and attach again"
                )

    def pods_by_slot(self) -> dict[int, CapturedPod]:
        found: dict[int, CapturedPod] = {}
        for key, meta in self.meta.items():
            found[key.value] = CapturedPod(
                pod_id=text(meta.key),
                name=text(meta.name),
                slot=key.value,
                netns=None,
                cgroup=None,
                netns_cookie=meta.netns_cookie,
            )
        return found

    def counters_of(self, slot: int) -> PodCounters:
        totals = [0] * abi.COUNTER_COUNT
        for per_cpu in self.counters.lookup(slot):
            for i in range(abi.COUNTER_COUNT):
                totals[i] += per_cpu.values[i]
        return PodCounters.from_values(totals)

    def occupancy(self) -> Occupancy:
        return Occupancy(
            mode="ebpf",
            connections=self.conns.count(),
            connections_capacity=libbpf.map_info(self.conns.fd).max_entries,
            pods=self.pods.count(),
            pods_capacity=abi.MAX_PODS,
        )

    def close(self) -> None:
        for handle in (
            self.config,
            self.cidrs,
            self.ports,
            self.plain_ports,
            self.pods,
            self.meta,
            self.conns,
        ):
            handle.close()
        self.counters.close()


class PinnedCapture(Closing):
    """A read-only view of a node's pinned capture, for status and trace (no loading)."""

    def __init__(self, pin_dir: Path) -> None:
        self.layout = Layout(pin_dir)
        if not self.layout.exists():
            raise CaptureError(f"no eBPF capture is pinned at {pin_dir}")
        self.maps = MapSet.pinned(self.layout)

    def pods(self) -> list[CapturedPod]:
        return [pod for _slot, pod in sorted(self.maps.pods_by_slot().items())]

    def counters(self, slot: int) -> PodCounters:
        return self.maps.counters_of(slot)

    def occupancy(self) -> Occupancy:
        return self.maps.occupancy()

    def links(self) -> list[tuple[Path, libbpf.LinkInfo]]:
        found = []
        for pin in self.layout.link_pins():
            with libbpf.Link.open_pinned(pin) as link:
                found.append((pin, link.info()))
        return found

    def close(self) -> None:
        self.maps.close()


def detach(pin_dir: Path) -> int:
    """Detach every link pinned under *pin_dir*, then remove the directory; returns how many.

    Needs no BPF object and no running owner: it works from the pins alone, whichever
    smesh version made them.
    """
    layout = Layout(pin_dir)
    count = 0
    for pin in layout.link_pins():
        try:
            with libbpf.Link.open_pinned(pin) as link:
                link.detach()
                count += 1
        except BpfError:
            pass  # not a link (or already gone): removing the pin below is all there is
    if pin_dir.exists():
        shutil.rmtree(pin_dir)
    return count
