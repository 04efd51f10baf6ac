"""Connecting from inside a pod, with the timeout and the error a record can carry."""

from __future__ import annotations

import asyncio
import socket

from smesh.dataplane.context import IPAddress, PodConfig, Services
from smesh.dataplane.sockets import family_of, prepare
from smesh.tunnel.connect import authority


class ConnectFailed(Exception):
    def __init__(self, result: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result  # refused | timeout | error
        self.detail = detail


async def dial(svc: Services, pod: PodConfig, ip: IPAddress, port: int) -> socket.socket:
    """A socket made inside the pod's namespace, connected to ip:port."""
    sock = prepare(pod.sockets.socket(family_of(ip), socket.SOCK_STREAM))
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (str(ip), port)),
            svc.limits.connect_timeout,
        )
    except TimeoutError:
        sock.close()
        raise ConnectFailed("timeout", f"connecting to {authority(ip, port)} timed out") from None
    except OSError as exc:
        sock.close()
        result = "refused" if isinstance(exc, ConnectionRefusedError) else "error"
        raise ConnectFailed(
            result, f"connecting to {authority(ip, port)}: {exc.strerror or exc}"
        ) from None
    except BaseException:
        sock.close()
        raise
    return sock
