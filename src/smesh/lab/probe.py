"""Waiting until a server in the lab really answers.

In a meshed lab a connect always succeeds at once: the pod's agent accepts it before it
knows whether the destination exists. So a probe half-closes and waits for the server's
EOF: a real server closes cleanly, while a missing one shows up as a reset from the mesh
(or a refusal without it).
"""

from __future__ import annotations

import subprocess
import sys
import time

from smesh.lab.errors import LabError

# Connect, half-close, read: EOF or data means a server answered; a reset or a refusal
# means nobody is there yet. (socat would exit 0 after a reset, so it cannot tell.)
_PROBE = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)
except OSError:
    sys.exit(1)
"""


def answers(lab: str, member: str, host: str, port: int) -> bool:
    argv = [sys.executable, "-m", "smesh", "lab", "exec", "--lab", lab, member, "--"]
    argv += [sys.executable, "-c", _PROBE, host, str(port)]
    proc = subprocess.run(argv, capture_output=True, check=False, timeout=20)
    return proc.returncode == 0


def wait_tcp(lab: str, member: str, host: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(lab, member, host, port):
            return
        time.sleep(0.1)
    raise LabError(f"nothing answers on {host}:{port} (seen from {member} in lab {lab!r})")
