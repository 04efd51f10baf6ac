"""cgroup v2 directories: where pods, node daemons and the agent live.

BPF capture attaches to cgroup v2 directories, so smesh only ever uses the v2 hierarchy.
Machines may mount it at /sys/fs/cgroup (unified) or beside v1 controllers (hybrid, often
/sys/fs/cgroup/unified); the mount table is the only reliable answer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from smesh.linux.errors import CgroupV2Missing, LinuxError


def v2_root(mounts_text: str | None = None) -> Path:
    """The mount point of the cgroup v2 hierarchy, read from /proc/mounts unless given."""
    text = mounts_text if mounts_text is not None else Path("/proc/mounts").read_text()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise CgroupV2Missing(
        "no cgroup v2 hierarchy is mounted (no 'cgroup2' entry in /proc/mounts); "
        "mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )


def of_pid(pid: int | str = "self") -> str:
    """The cgroup v2 path of a process, relative to the v2 root (e.g. ``/smesh-lab-x/node-1``)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise CgroupV2Missing(f"process {pid} has no cgroup v2 membership")


def create(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def join(path: Path, pid: int = 0) -> None:
    """Move process *pid* (0: the caller) into cgroup *path*."""
    try:
        (path / "cgroup.procs").write_text(str(pid or os.getpid()))
    except OSError as exc:
        raise LinuxError(f"cannot move process into cgroup {path}: {exc.strerror}") from exc


def pids(path: Path) -> list[int]:
    """Every process in cgroup *path* and its descendants."""
    found: list[int] = []
    for directory, _dirs, _files in os.walk(path):
        try:
            text = (Path(directory) / "cgroup.procs").read_text()
        except FileNotFoundError:
            continue
        found.extend(int(p) for p in text.split())
    return found


def kill_all(path: Path) -> None:
    """SIGKILL every process in the subtree (``cgroup.kill``, Linux ≥ 5.14)."""
    kill_file = path / "cgroup.kill"
    if not path.exists():
        return
    if kill_file.exists():
        kill_file.write_text("1")
        return
    for pid in pids(path):  # older kernels: one by one
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


def remove_tree(path: Path, timeout: float = 5.0, kill: bool = False) -> None:
    """Remove cgroup *path* and its children, bottom-up, waiting for dying processes.

    With *kill*, processes that joined after the caller's :func:`kill_all` (a command
    starting up just then) are killed too, instead of failing the removal.
    """
    if not path.exists():
        return
    deadline = time.monotonic() + timeout
    for directory, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise LinuxError(
                        f"cannot remove cgroup {directory}: {exc.strerror} "
                        f"(processes still in it: {pids(Path(directory))})"
                    ) from exc
                if kill:
                    kill_all(Path(directory))
                time.sleep(0.02)
