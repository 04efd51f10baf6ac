"""What the CLI's unit tests share: smesh run as a user runs it, and an address that does
not answer."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

SmeshCli = Callable[..., subprocess.CompletedProcess[str]]


def _smesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smesh", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def smesh_cli() -> SmeshCli:
    """``smesh ARGS…`` in a process of its own (its exit status and streams as a shell
    sees them); the answer, never raised on a failing status."""
    return _smesh


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
