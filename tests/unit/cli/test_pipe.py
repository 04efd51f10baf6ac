"""`smesh ... | head -1`: a reader that goes away ends smesh quietly, as SIGPIPE ends a CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def run_into_closed_pipe(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before smesh writes a byte: every write is EPIPE
    try:
        return subprocess.run(
            [sys.executable, "-m", "smesh", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )
    finally:
        os.close(write)


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_status() -> None:
    proc = run_into_closed_pipe("--version")
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE


def test_a_command_that_prints_at_its_end_too(tmp_path: Path) -> None:
    # `lab list` prints its table from the command (not argparse), and Python would also
    # complain at exit while flushing stdout
    env = {**os.environ, "SMESH_RUN_DIR": str(tmp_path)}
    proc = run_into_closed_pipe("lab", "list", env=env)
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE
