"""eBPF capture for one node: load once, attach per pod, pin everything, take over on restart.

Lifecycle: ``open()`` loads the four objects, reusing the maps an earlier owner pinned,
fills the config maps, and moves every pinned link onto the freshly loaded programs (an
in-place swap, so capture never has a gap). ``add_pod``/``remove_pod``/``attach_proxy``
change attachments, each one pinned. ``close()`` releases this process's handles and
leaves capture in place; ``detach_all()`` removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import logging
import os
from pathlib import Path
from typing import Self

from smesh.capture import abi, libbpf, pins
from smesh.capture.config import CaptureConfig, addr16, cidr_key, config_struct
from smesh.capture.errors import CaptureError
from smesh.capture.node import CapturedPod, Mode, Occupancy, PodCounters
from smesh.capture.system import CgroupDir, ensure_bpffs, netns_cookie

log = logging.getLogger(__name__)


def _encode(value: str, size: int, what: str) -> bytes:
    raw = value.encode()
    if len(raw) >= size:
        raise CaptureError(f"{what} {value!r} is too long ({len(raw)} bytes, at most {size - 1})")
    return raw


def _sync_ports(ports: libbpf.Map[ctypes.c_uint16, ctypes.c_uint8], want: tuple[int, ...]) -> None:
    """Make a port set hold exactly *want* (a restarted loader finds the old set pinned)."""
    for key in list(ports.keys()):
        if key.value not in want:
            ports.delete(key)
    for port in want:
        ports.update(ctypes.c_uint16(port), ctypes.c_uint8(1))


class EbpfCapture:
    """The eBPF backend of :class:`~smesh.capture.node.NodeCapture`."""

    def __init__(
        self,
        pin_dir: Path,
        config: CaptureConfig | None = None,
        objects_dir: Path | None = None,
    ) -> None:
        self.pin_dir = pin_dir
        self.config = config or CaptureConfig()
        self._objects_dir = objects_dir
        self._layout = pins.Layout(pin_dir)
        self._objects: dict[str, libbpf.BpfObject] = {}
        self._maps: pins.MapSet | None = None
        self._links: dict[Path, libbpf.Link] = {}
        self._pods: dict[str, CapturedPod] = {}  # by pod_id
        self._lock_fd = -1

    @property
    def mode(self) -> Mode:
        return "ebpf"

    # --- lifecycle ---------------------------------------------------------------------

    def open(self) -> None:
        if self._maps is not None:
            return
        ensure_bpffs(self.pin_dir)
        self._layout.maps.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            self._load()
            self._configure()
            self._take_over()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        """One owner per node: a second one would fight the first over the same pins."""
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CaptureError(
                f"another process (an agent?) owns the capture pinned at {self.pin_dir}; "
                "stop it first, or use `smesh capture detach`, which works while it runs"
            ) from None
        self._lock_fd = fd

    def _check_pins_are_ours(self) -> None:
        """`smesh capture detach` may remove the pins (and the locked directory) while this
        owner runs: capturing on would pin links beside maps nobody can find again, in a
        directory another owner could lock."""
        try:
            same = os.stat(self.pin_dir).st_ino == os.fstat(self._lock_fd).st_ino
        except OSError:
            same = False
        if not same:
            raise CaptureError(
                f"capture at {self.pin_dir} was detached (`smesh capture detach`) while this "
                "process owned it; restart it to capture again"
            )

    def _load(self) -> None:
        tracked = self.config.max_tracked_connections
        conns_pin = self._layout.map(abi.MapName.CONNS)
        if conns_pin.exists():  # an earlier owner sized it: keep its size (and its entries)
            fd = libbpf.obj_get(conns_pin)
            try:
                pinned = libbpf.map_info(fd).max_entries
            finally:
                os.close(fd)
            if pinned != tracked:
                log.warning(
                    "keeping the pinned connection map's size %d (config asks %d); "
                    "detach capture to resize it",
                    pinned,
                    tracked,
                )
            tracked = pinned
        for stem in abi.OBJECTS:
            obj = libbpf.BpfObject(abi.object_path(stem, self._objects_dir))
            self._objects[stem] = obj
            for name in abi.MapName:
                handle = obj.map(name)
                handle.set_pin_path(self._layout.map(name))
                if name == abi.MapName.CONNS:
                    handle.set_max_entries(tracked)
            obj.load()
        first = self._objects[abi.OBJECTS[0]]
        self._maps = pins.MapSet({n: first.map(n).fd for n in abi.MapName}, owned=False)

    def _map_set(self) -> pins.MapSet:
        if self._maps is None:
            raise CaptureError("eBPF capture is not open; call open() first")
        return self._maps

    def _configure(self) -> None:
        maps = self._map_set()
        _sync_ports(maps.ports, self.config.never_captured_ports)
        _sync_ports(maps.plain_ports, self.config.plaintext_ports)
        want_cidrs = {bytes(cidr_key(n)): cidr_key(n) for n in self.config.captured_cidrs}
        for cidr in list(maps.cidrs.keys()):
            if bytes(cidr) not in want_cidrs:
                maps.cidrs.delete(cidr)
        for cidr in want_cidrs.values():
            maps.cidrs.update(cidr, ctypes.c_uint8(1))
        maps.counters.reset(0)
        # Last: until the config says "configured", the programs capture nothing.
        maps.config.update(ctypes.c_uint32(0), config_struct(self.config))

    def _program(self, spec: abi.ProgramSpec) -> libbpf.Program:
        return self._objects[spec.obj].program(spec.name)

    def _take_over(self) -> None:
        """Point every link an earlier owner pinned at the programs loaded now."""
        specs = {spec.name: spec for spec in (*abi.POD_PROGRAMS, *abi.PROXY_PROGRAMS)}
        for pin in self._layout.link_pins():
            spec = specs.get(pin.name)
            if spec is None:
                log.warning("unknown pin %s left by another smesh version: detaching it", pin)
                with libbpf.Link.open_pinned(pin) as stale:
                    stale.detach()
                pin.unlink()
                continue
            self._adopt(pin, spec)
        maps = self._map_set()
        for slot, pod in maps.pods_by_slot().items():
            self._pods[pod.pod_id] = pod
            log.info("took over capture of pod %s (slot %d)", pod.name, slot)

    def close(self) -> None:
        """Release handles; pinned links and maps keep capture in place."""
        for link in self._links.values():
            link.close()
        self._links.clear()
        if self._maps is not None:
            self._maps.close()
            self._maps = None
        for obj in self._objects.values():
            obj.close()
        self._objects.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- attachments -------------------------------------------------------------------

    def _adopt(self, pin: Path, spec: abi.ProgramSpec) -> libbpf.Link | None:
        """Run the program loaded now through a pinned link; None if its cgroup is gone.

        The kernel detaches the links of a removed cgroup (a pod deleted, or an agent
        restarted in a new container, while nobody owned the pins) but leaves them pinned,
        and such a link refuses a new program: it is unpinned here instead.
        """
        link = libbpf.Link.open_pinned(pin)
        try:
            if link.info().cgroup_id == 0:
                log.info("unpinning %s: its cgroup was removed", pin)
                link.unpin()
                link.close()
                with contextlib.suppress(OSError):
                    pin.parent.rmdir()  # once its last pin is gone
                return None
            link.update_program(self._program(spec))
        except BaseException:
            link.close()
            raise
        self._links[pin] = link
        return link

    def _ensure_link(self, pin: Path, spec: abi.ProgramSpec, cgroup: CgroupDir) -> None:
        link = self._links.get(pin)
        if link is None and pin.exists():
            link = self._adopt(pin, spec)
        if link is not None:
            if link.info().cgroup_id == cgroup.id:
                return
            self._drop_link(pin)  # the pod got a new cgroup: move the attachment
        self._check_pins_are_ours()
        pin.parent.mkdir(parents=True, exist_ok=True)
        link = self._program(spec).attach_cgroup(cgroup.fd, cgroup.path)
        try:
            link.pin(pin)
        except BaseException:
            link.detach()
            link.close()
            raise
        self._links[pin] = link

    def _drop_link(self, pin: Path) -> None:
        link = self._links.pop(pin, None)
        if link is None:
            if not pin.exists():
                return
            link = libbpf.Link.open_pinned(pin)
        with link:
            link.detach()
        with contextlib.suppress(FileNotFoundError):
            pin.unlink()

    def attach_proxy(self, cgroup: Path) -> None:
        self._map_set()
        with CgroupDir.open(cgroup) as cg:
            for spec in abi.PROXY_PROGRAMS:
                self._ensure_link(self._layout.proxy_dir(cg.id) / spec.name, spec, cg)
        log.info("SO_ORIGINAL_DST is answered for sockets of cgroup %s", cgroup)

    def detach_proxy(self, cgroup: Path) -> None:
        directory = self._layout.proxy_dir(cgroup.stat().st_ino)
        for spec in reversed(abi.PROXY_PROGRAMS):
            self._drop_link(directory / spec.name)
        with contextlib.suppress(OSError):
            directory.rmdir()

    def _free_slot(self, taken: set[int]) -> int:
        for slot in range(1, abi.MAX_PODS):
            if slot not in taken:
                return slot
        raise CaptureError(f"no room for another pod: at most {abi.MAX_PODS - 1} per node")

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
        maps = self._map_set()
        key = _encode(pod_id, abi.POD_KEY_LEN, "pod id")
        label = _encode(name, abi.POD_NAME_LEN, "pod name")
        cookie = netns_cookie(netns)
        with CgroupDir.open(cgroup) as cg:
            known = self._pods.get(pod_id)
            if known is not None:
                slot = known.slot
                if known.netns_cookie and known.netns_cookie != cookie:
                    self._forget_netns(known.netns_cookie)  # a new sandbox for the same pod
            else:
                slot = self._free_slot({p.slot for p in self._pods.values()})
                maps.counters.reset(slot)
            info = abi.Pod()
            info.id = slot
            if ipv4 is not None:
                info.ip4 = abi.Addr16(*addr16(ipv4))
                info.flags |= abi.POD_HAS_IP4
            if ipv6 is not None:
                info.ip6 = abi.Addr16(*addr16(ipv6))
                info.flags |= abi.POD_HAS_IP6
            meta = abi.PodMeta()
            meta.netns_cookie = cookie
            meta.cgroup_id = cg.id
            meta.key = key
            meta.name = label
            maps.meta.update(ctypes.c_uint32(slot), meta)
            maps.pods.update(ctypes.c_uint64(cookie), info)
            directory = self._layout.pod_dir(slot)
            for spec in abi.POD_PROGRAMS:
                self._ensure_link(directory / spec.name, spec, cg)
        pod = CapturedPod(pod_id, name, slot, netns, cgroup, ipv4, ipv6, cookie)
        self._pods[pod_id] = pod
        log.info("capturing pod %s (slot %d, cgroup %s)", name, slot, cgroup)
        return pod

    def _forget_netns(self, cookie: int) -> None:
        maps = self._map_set()
        maps.pods.delete(ctypes.c_uint64(cookie))
        for conn in list(maps.conns.keys()):
            if conn.netns_cookie == cookie:
                maps.conns.delete(conn)

    def remove_pod(self, pod_id: str) -> bool:
        maps = self._map_set()
        pod = self._pods.pop(pod_id, None)
        if pod is None:
            return False
        directory = self._layout.pod_dir(pod.slot)
        for spec in reversed(abi.POD_PROGRAMS):
            self._drop_link(directory / spec.name)
        with contextlib.suppress(OSError):
            directory.rmdir()
        if pod.netns_cookie:
            self._forget_netns(pod.netns_cookie)
        maps.meta.delete(ctypes.c_uint32(pod.slot))
        log.info("stopped capturing pod %s", pod.name)
        return True

    def detach_all(self) -> None:
        """Detach every pinned link (even ones this process did not make) and unpin all."""
        for link in self._links.values():
            with contextlib.suppress(CaptureError):
                link.detach()
        pins.detach(self.pin_dir)  # still holding the lock: no new owner pins in between
        self.close()
        self._pods.clear()

    # --- inspection --------------------------------------------------------------------

    def pods(self) -> list[CapturedPod]:
        return sorted(self._pods.values(), key=lambda p: p.slot)

    def pod(self, pod_id: str) -> CapturedPod:
        try:
            return self._pods[pod_id]
        except KeyError:
            raise CaptureError(f"pod {pod_id!r} is not captured on this node") from None

    def counters(self, pod_id: str) -> PodCounters:
        return self._map_set().counters_of(self.pod(pod_id).slot)

    def occupancy(self) -> Occupancy:
        return self._map_set().occupancy()

    @property
    def maps(self) -> pins.MapSet:
        """The typed maps (for status, tests and tools)."""
        return self._map_set()
