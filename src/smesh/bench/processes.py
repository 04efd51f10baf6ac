"""Processes of a benchmark run: started inside lab pods and nodes, watched through /proc.

Everything is started with ``smesh lab exec``, which replaces itself with the command, so
the pid we hold is the command's own pid, inside the member's cgroup and namespace.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from smesh.bench import parse
from smesh.bench.errors import BenchError

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def lab_argv(lab: str, member: str, argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "smesh", "lab", "exec", "--lab", lab, member, "--", *argv]


def run(lab: str, member: str, argv: Sequence[str], timeout: float) -> str:
    """Run *argv* in *member* to completion; its stdout, or an error with its stderr."""
    try:
        proc = subprocess.run(
            lab_argv(lab, member, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} in {member} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} in {member} exited {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[-400:]}"
        )
    return proc.stdout


class Started:
    """A long-running process of the run; stopped (by its pid) when the run ends."""

    def __init__(self, lab: str, member: str, argv: Sequence[str], log: Path) -> None:
        self.name = f"{argv[0].rsplit('/', 1)[-1]} in {member}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                lab_argv(lab, member, argv),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").strip()[-400:]
            raise BenchError(f"{self.name} exited {self.proc.returncode}: {tail}")

    def wait_listening(self, ports: Sequence[int], timeout: float = 10.0) -> None:
        """Until every port listens in the process's namespace (read from its /proc)."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if set(ports) <= listening_ports(self.pid):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name} is not listening on {sorted(ports)} yet")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


def listening_ports(pid: int) -> set[int]:
    found: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN:
                found.add(int(fields[1].rsplit(":", 1)[1], 16))
    return found


def cgroup_cpu_seconds(cgroup: Path) -> float:
    """CPU used by every process that ever ran in *cgroup* (threads and exited ones too)."""
    for line in (cgroup / "cpu.stat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value) / 1e6
    raise BenchError(f"{cgroup}/cpu.stat has no usage_usec")


def cgroup_rss_kib(cgroup: Path) -> int:
    """Resident memory of the processes in *cgroup*, summed (each process counted once)."""
    total = 0
    for pid in (cgroup / "cgroup.procs").read_text().split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, BenchError):
            total += parse.rss_kib(int(pid))
    return total
