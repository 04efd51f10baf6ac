"""The lab kubelet's readiness probes: exec, httpGet and tcpSocket, as the kubelet runs them.

An ``exec`` probe runs its command in the container's namespaces (``nsenter`` into the
mount and network namespaces of the container's process). ``httpGet`` and ``tcpSocket``
connect to the pod's IP (or ``host``) from a socket made in the pod's network namespace (the
node's, for a host-network pod): a real kubelet dials from the node, but in the lab the node
namespace may hold a mesh capture that is not the probe's business, and the pod's own
namespace reaches the pod's IP over loopback. ``httpGet`` succeeds on a status from 200 to
399, as the kubelet's prober.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Mapping, Sequence

from lightkube.models.core_v1 import Container, Probe

from smesh.linux import netns
from smesh.linux.errors import LinuxError

USER_AGENT = "kube-probe/lab"
MAX_READ = 10 * 1024  # the kubelet reads at most 10 KiB of a probe's answer


def port_of(spec: Container, port: int | str) -> int:
    """A probe's ``port``: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for entry in spec.ports or []:
        if entry.name == port:
            return entry.containerPort
    raise ValueError(f"the container has no port named {port!r}")


async def _connect(host: str, port: int, namespace: str | None, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if namespace:
        sock = netns.socket_in(namespace, family)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


def http_request(path: str, host: str, port: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"GET {path or '/'} HTTP/1.1", f"Host: {host}:{port}"]
    names = {k.lower() for k in headers}
    if "user-agent" not in names:
        lines.append(f"User-Agent: {USER_AGENT}")
    if "accept" not in names:
        lines.append("Accept: */*")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_status(head: bytes) -> int:
    """The status code of an HTTP answer's first line (0 if it is not one)."""
    parts = head.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return 0


async def run_probe(
    probe: Probe,
    spec: Container,
    *,
    pid: int,
    pod_ip: str,
    namespace: str | None,
    env: Mapping[str, str],
) -> tuple[bool, str]:
    """One attempt of *probe*: (success, what failed)."""
    timeout = float(probe.timeoutSeconds or 1)
    try:
        if probe.exec is not None:
            return await _exec(probe.exec.command or [], pid, env, timeout)
        if probe.tcpSocket is not None:
            host = probe.tcpSocket.host or pod_ip
            port = port_of(spec, probe.tcpSocket.port)
            (await _connect(host, port, namespace, timeout)).close()
            return True, ""
        if probe.httpGet is not None:
            get = probe.httpGet
            host = get.host or pod_ip
            port = port_of(spec, get.port)
            headers = {h.name: h.value for h in get.httpHeaders or []}
            sock = await _connect(host, port, namespace, timeout)
            context = None
            if (get.scheme or "HTTP").upper() == "HTTPS":
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE  # as the kubelet: no verification
            reader, writer = await asyncio.open_connection(sock=sock, ssl=context)
            try:
                writer.write(http_request(get.path or "/", host, port, headers))
                head = await asyncio.wait_for(reader.read(MAX_READ), timeout)
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
            code = http_status(head)
            return 200 <= code < 400, f"HTTP probe failed with statuscode: {code}"
    except (OSError, TimeoutError, ValueError, ssl.SSLError, LinuxError) as exc:
        return False, f"probe failed: {exc or type(exc).__name__}"
    return False, "the lab kubelet runs exec, httpGet and tcpSocket probes only"


async def _exec(
    command: Sequence[str], pid: int, env: Mapping[str, str], timeout: float
) -> tuple[bool, str]:
    if not command:
        return False, "exec probe without a command"
    proc = await asyncio.create_subprocess_exec(
        "nsenter",
        f"--target={pid}",
        "--mount",
        "--net",
        "--",
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return False, f"command timed out after {timeout:.0f}s"
    text = output[:MAX_READ].decode(errors="replace").strip()
    return proc.returncode == 0, text or f"exit status {proc.returncode}"
