"""Running a concurrency-model candidate's proxy pair on loopback, for its tests."""

from __future__ import annotations

import collections.abc
import contextlib
import socket
import subprocess
import sys
from pathlib import Path


def free_ports(count: int) -> list[int]:
    """Distinct free ports: all stay bound until each is picked, so none comes twice.

    (The candidates listen with SO_REUSEPORT, so two roles handed the same port would
    share it silently, and a plaintext client would now and then reach the TLS side.)
    """
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


@contextlib.contextmanager
def running_pair(
    model: str,
    target_port: int,
    ca: Path,
    node_files: dict[str, tuple[Path, Path]],
    *options: str,
    logs: Path | None = None,
) -> collections.abc.Iterator[tuple[int, int, list[subprocess.Popen[bytes]]]]:
    """Node-2's server role in front of *target_port*, node-1's client role in front of
    it (*node_files*: node name to certificate and key); yields the client's port, the
    tunnel's port and both processes, each already ready, and ends both."""
    tunnel, front = free_ports(2)
    started: list[subprocess.Popen[bytes]] = []
    try:
        for role, listen, to, node in (
            ("server", tunnel, target_port, "node-2"),
            ("client", front, tunnel, "node-1"),
        ):
            cert, key = node_files[node]
            proc = subprocess.Popen(
                [sys.executable, "-m", "smesh.bench.candidates", model, "--role", role,
                 "--listen", f"127.0.0.1:{listen}", "--target", f"127.0.0.1:{to}",
                 "--cert", str(cert), "--key", str(key), "--ca", str(ca), *options],
                stdout=subprocess.PIPE,
                stderr=None if logs is None else (logs / f"{role}.log").open("wb"),
            )  # fmt: skip
            started.append(proc)
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
        yield front, tunnel, started
    finally:
        for proc in started:
            proc.terminate()
            proc.wait(10)
