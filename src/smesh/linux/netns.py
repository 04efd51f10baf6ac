"""Named network namespaces (the `ip netns` kind, bind-mounted under /run/netns).

Linux network namespaces are per thread, so smesh enters one in a short-lived thread to
create sockets or write per-namespace sysctls there; a socket keeps the namespace it was
created in. The calling thread is never moved, so the rest of the process is unaffected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from smesh.closing import Closing
from smesh.linux.errors import LinuxError, NetnsNotFound

NETNS_RUN_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def path_of(name: str) -> Path:
    """A namespace named as `ip netns` does (``lab.pod-1``) or by path (``/proc/PID/ns/net``)."""
    return Path(name) if name.startswith("/") else NETNS_RUN_DIR / name


def exists(name: str) -> bool:
    return path_of(name).exists()


def list_names() -> list[str]:
    try:
        return sorted(entry.name for entry in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def _open(name: str) -> int:
    try:
        return os.open(path_of(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(f"network namespace {name!r} does not exist") from None


def enter(name: str) -> None:
    """Move the *calling thread* into network namespace *name*.

    Meant for a process about to exec (``lab exec``) or for a dedicated thread.
    """
    fd = _open(name)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LinuxError(f"cannot enter network namespace {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in(name: str, fn: Callable[[], T]) -> T:
    """Run *fn* in a thread that lives in namespace *name* and return its result."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter(name)
            result.append(fn())
        except BaseException as exc:  # handed back to the caller below
            error.append(exc)

    thread = threading.Thread(target=target, name=f"netns:{name}")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def socket_in(
    name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A new socket that belongs to namespace *name* (while this process stays where it is)."""
    return run_in(name, lambda: socket.socket(family, kind))


def write_sysctl(name: str, key: str, value: str) -> None:
    """Set a per-namespace sysctl such as ``net.ipv4.ip_forward`` inside namespace *name*."""
    path = Path("/proc/sys") / key.replace(".", "/")
    run_in(name, lambda: path.write_text(value))


def interface_names(dev_text: str) -> list[str]:
    """The interface names in the text of ``/proc/net/dev`` (two header lines, then one
    ``NAME: counters...`` line per interface)."""
    names = []
    for line in dev_text.splitlines()[2:]:
        name, colon, _counters = line.partition(":")
        if colon and name.strip():
            names.append(name.strip())
    return names


def _one_link() -> int:
    names = [n for n in interface_names(Path("/proc/thread-self/net/dev").read_text()) if n != "lo"]
    if len(names) != 1:
        return 0
    try:
        return socket.if_nametoindex(names[0])
    except OSError:  # renamed or gone since: as if it had none
        return 0


def single_link(ns: Namespace) -> int:
    """The index of the namespace's one interface besides loopback; 0 if it has more or none.

    A pod has one (its veth, ``eth0``): the link its IPv6 link-local neighbours are on.
    Asked on the calling thread (:meth:`Namespace.run`): a thread per pod start would block
    an agent's event loop until it was scheduled, which held other pods' CNI ADDs up. And
    asked without rtnetlink: a link dump (``if_nameindex``) waits for the kernel's global
    RTNL lock, which every veth, address and namespace change on the machine takes (a
    burst of pod sandboxes, a namespace being torn down), and was seen to hold a pod's
    start for up to 0.8 s; ``/proc/net/dev`` (read as this thread, so in *ns*) and the
    ``SIOCGIFINDEX`` ioctl behind ``if_nametoindex`` read the devices under RCU.
    """
    return ns.run(_one_link)


def inode_of(name: str) -> int:
    """The namespace's inode number: the identity the kernel uses (as /proc/PID/ns/net)."""
    return path_of(name).stat().st_ino


class Namespace(Closing):
    """A network namespace held open, for creating many sockets in it cheaply.

    :meth:`socket` switches the *calling* thread into the namespace and back around one
    ``socket()`` call: two ``setns`` system calls, no thread hand-off, so the data plane
    can afford it for every new connection. Between the two calls nothing else may run on
    the thread, which holds on an event loop: the switch is synchronous.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._fd = _open(name)
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        return self.run(lambda: socket.socket(family, kind))

    def run(self, fn: Callable[[], T]) -> T:
        """*fn*'s result, called with this thread in the namespace (for what opens a socket)."""
        if _libc.setns(self._fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LinuxError(f"cannot enter network namespace {self.name!r}: {os.strerror(err)}")
        try:
            return fn()
        finally:
            if _libc.setns(self._home, CLONE_NEWNET) != 0:  # pragma: no cover - kernel bug only
                raise LinuxError("cannot return to the agent's own network namespace")

    @property
    def inode(self) -> int:
        return os.fstat(self._fd).st_ino

    def close(self) -> None:
        for fd in (self._fd, self._home):
            if fd >= 0:
                os.close(fd)
        self._fd = self._home = -1


class NamespaceHandles(Closing):
    """One open :class:`Namespace` per key (the agent's pods), following a key's moves.

    A pod re-created in a new sandbox has a new namespace under the same key: its sockets
    must be made there, not in the old one, which the old handle would also keep alive.
    """

    def __init__(self) -> None:
        self._held: dict[str, Namespace] = {}

    def of(self, key: str, name: str) -> Namespace:
        ns = self._held.get(key)
        if ns is not None and ns.name == name:
            return ns
        self.release(key)
        ns = self._held[key] = Namespace(name)
        return ns

    def release(self, key: str) -> None:
        ns = self._held.pop(key, None)
        if ns is not None:
            ns.close()

    def close(self) -> None:
        for key in list(self._held):
            self.release(key)
