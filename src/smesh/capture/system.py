"""The kernel facts capture stands on: bpffs for pins, cgroup v2 directories, netns cookies."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from smesh.capture.errors import BpffsMissing, CaptureError, CgroupNotV2
from smesh.closing import Closing
from smesh.linux import cgroups, netns
from smesh.linux.errors import LinuxError

BPFFS = Path("/sys/fs/bpf")
SO_NETNS_COOKIE = 71  # <asm-generic/socket.h>, Linux >= 5.14

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]


def _mount_of(path: Path, mounts_text: str) -> tuple[str, str]:
    """(mount point, fs type) of the mount holding *path*: the longest matching prefix."""
    best = ("/", "")
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = str(path) == point or str(path).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best


def ensure_bpffs(pin_dir: Path, mounts_text: str | None = None) -> None:
    """Make sure *pin_dir* is on a BPF filesystem, mounting one at /sys/fs/bpf if needed."""
    text = mounts_text if mounts_text is not None else Path("/proc/mounts").read_text()
    _point, fstype = _mount_of(pin_dir, text)
    if fstype == "bpf":
        return
    if pin_dir != BPFFS and BPFFS not in pin_dir.parents:
        raise BpffsMissing(
            f"pin directory {pin_dir} is not on a BPF filesystem; use a path under {BPFFS} "
            "or mount one there (`mount -t bpf bpf DIR`)"
        )
    if _libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise BpffsMissing(f"cannot mount the BPF filesystem at {BPFFS}: {os.strerror(err)}")


@dataclass
class CgroupDir(Closing):
    """An open cgroup v2 directory: what BPF programs attach to."""

    path: Path
    fd: int
    id: int  # the kernel's cgroup id: the directory's inode number

    @classmethod
    def open(cls, path: Path) -> CgroupDir:
        """Open *path*, refusing anything that is not a non-root cgroup v2 directory."""
        try:
            root = cgroups.v2_root()
        except LinuxError as exc:
            raise CgroupNotV2(str(exc)) from None
        try:
            st = path.stat()
        except FileNotFoundError:
            raise CgroupNotV2(f"cgroup {path} does not exist") from None
        root_st = root.stat()
        if st.st_dev != root_st.st_dev or not (path / "cgroup.procs").exists():
            raise CgroupNotV2(f"{path} is not a cgroup v2 directory (the v2 root is {root})")
        if st.st_ino == root_st.st_ino:
            raise CgroupNotV2(
                f"refusing to attach to the root cgroup {path}: it would capture every "
                "process on the machine; give a pod's (or the proxy's) own cgroup"
            )
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return cls(path=path, fd=fd, id=st.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def cgroup_id(path: Path) -> int:
    return path.stat().st_ino


def netns_cookie(name: str) -> int:
    """The kernel's cookie of network namespace *name* (what bpf_get_netns_cookie returns)."""
    # A held namespace, not socket_in: no thread per pod start (this runs on the agent's loop).
    with netns.Namespace(name) as ns, ns.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        except OSError as exc:
            raise CaptureError(
                f"cannot read the cookie of network namespace {name!r} ({exc.strerror}); "
                "eBPF capture needs Linux >= 5.14"
            ) from None
    return int.from_bytes(raw, sys.byteorder)
