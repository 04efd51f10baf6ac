"""Connecting from inside a pod, with the timeout and the error a record can carry.

The event loop's ``sock_connect`` is not used: uvloop resolves even a numeric address
through libuv's thread pool (a thread hand-off and back for every connection, measured at
about 100 µs against 35 µs for the whole connect), and both loops pay a future and a
writer registration for connects that are already done. A connect to the pod's own app
goes over the pod's loopback and is complete when the system call returns, so
:class:`Connecting` asks the kernel once more before it waits for anything.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from collections.abc import Callable

from smesh.dataplane.context import IPAddress, PodConfig, Services
from smesh.dataplane.sockets import family_of, prepare
from smesh.errors import SmeshError
from smesh.tunnel.connect import authority


class ConnectFailed(Exception):
    def __init__(self, result: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result  # refused | timeout | error
        self.detail = detail


Outcome = socket.socket | ConnectFailed
_UNDER_WAY = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN)


class Connecting:
    """One non-blocking connect; *on_done* gets the socket or the failure, exactly once.

    *on_done* may run before the constructor returns (the connect finished at once).
    :meth:`cancel` closes the socket and stays silent.
    """

    __slots__ = ("_ip", "_loop", "_on_done", "_port", "_sock", "_timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        target: tuple[IPAddress, int],
        timeout: float,
        on_done: Callable[[Outcome], None],
    ) -> None:
        self._loop = loop
        self._sock: socket.socket | None = sock
        self._ip, self._port = ip, port = target
        self._on_done = on_done
        self._timer: asyncio.TimerHandle | None = None
        address = sockaddr(ip, port)
        try:
            err = sock.connect_ex(address)
            if err in _UNDER_WAY:
                err = sock.connect_ex(address)  # a loopback handshake is over by now: 0
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err in _UNDER_WAY:
            loop.add_writer(sock.fileno(), self._writable)
            self._timer = loop.call_later(timeout, self._timed_out)
            return
        self._finish(0 if err == errno.EISCONN else err)

    @property
    def pending(self) -> bool:
        return self._sock is not None

    def cancel(self) -> None:
        sock = self._sock
        if sock is not None:
            self._stop_waiting(sock)
            sock.close()

    def _stop_waiting(self, sock: socket.socket) -> None:
        self._sock = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._loop.remove_writer(sock.fileno())

    def _writable(self) -> None:
        if self._sock is not None:
            self._finish(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _timed_out(self) -> None:
        sock = self._sock
        if sock is not None:
            self._stop_waiting(sock)
            sock.close()
            where = authority(self._ip, self._port)
            self._on_done(ConnectFailed("timeout", f"connecting to {where} timed out"))

    def _finish(self, err: int) -> None:
        sock = self._sock
        assert sock is not None
        self._stop_waiting(sock)
        if err == 0:
            self._on_done(sock)
            return
        sock.close()
        result = "refused" if err == errno.ECONNREFUSED else "error"
        where = authority(self._ip, self._port)
        self._on_done(ConnectFailed(result, f"connecting to {where}: {os.strerror(err)}"))


def sockaddr(ip: IPAddress, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    """The address to connect to; a scoped IPv6 address keeps its scope.

    With a 2-tuple Python sets ``sin6_scope_id`` to 0 even for ``fe80::1%2``, and the
    kernel refuses a link-local connect without one (EINVAL).
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return (str(ip).partition("%")[0], port, 0, int(ip.scope_id))
    return (str(ip), port)


def start_dial(
    loop: asyncio.AbstractEventLoop,
    svc: Services,
    pod: PodConfig,
    target: tuple[IPAddress, int],
    on_done: Callable[[Outcome], None],
) -> Connecting:
    """Connect a socket made inside the pod's namespace to *target*, on callbacks.

    Raises :class:`ConnectFailed` when no socket can be made (the pod is out of
    descriptors, its namespace is gone): to the peer, like any failed connect.
    """
    try:
        sock = prepare(pod.sockets.socket(family_of(target[0]), socket.SOCK_STREAM))
    except (OSError, SmeshError) as exc:
        raise ConnectFailed("error", f"connecting to {authority(*target)}: {exc}") from exc
    return Connecting(loop, sock, target, svc.limits.connect_timeout, on_done)


async def dial(svc: Services, pod: PodConfig, ip: IPAddress, port: int) -> socket.socket:
    """:func:`start_dial` for coroutines; raises :class:`ConnectFailed`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Outcome] = loop.create_future()
    connecting = start_dial(loop, svc, pod, (ip, port), done.set_result)
    try:
        outcome = await done  # no suspension when the connect finished at once
    except BaseException:
        connecting.cancel()
        raise
    if isinstance(outcome, ConnectFailed):
        raise outcome
    return outcome
