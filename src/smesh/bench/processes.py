"""Processes of a benchmark run: started inside lab pods and nodes, watched through /proc.

Everything is started with ``smesh lab exec``, which replaces itself with the command, so
the pid we hold is the command's own pid, inside the member's cgroup and namespace.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smesh.bench import parse
from smesh.bench.errors import BenchError
from smesh.lab import agents

PROC = Path("/proc")

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
    """A long-running process of the run; stopped (by its pid) when the run ends.

    With *nice*, it runs in a session of its own (so an autogroup of its own) at *nice*,
    the autogroup too, as the lab starts its agents (``smesh.lab.agents.set_weight``);
    without, in the bench's session at the bench's nice value.
    """

    def __init__(
        self, lab: str, member: str, argv: Sequence[str], log: Path, *, nice: int | None = None
    ) -> None:
        self.name = f"{argv[0].rsplit('/', 1)[-1]} in {member}"
        self.log = log
        weigh = None if nice is None else functools.partial(agents.set_weight, nice)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                lab_argv(lab, member, argv),
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=nice is not None,
                # the bench starts proxies before any thread of its own (a run's groups)
                preexec_fn=weigh,  # noqa: PLW1509
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


@dataclass(frozen=True, order=True)
class Weight:
    """What the scheduler weighs a thread by, where the cpu controller is not per process:
    its nice value, and its autogroup's (None: the kernel has no autogroups)."""

    nice: int
    autogroup_nice: int | None  # None: in the root autogroup, or the kernel has none
    own_autogroup: bool  # not the bench's own session's autogroup

    def describe(self) -> str:
        if self.autogroup_nice is None:
            return f"nice {self.nice} (in no autogroup of its own)"
        group = "an autogroup of its own" if self.own_autogroup else "the bench's autogroup"
        return f"nice {self.nice} in {group} at nice {self.autogroup_nice}"


def stat_nice(stat: str) -> int:
    """The nice value in a /proc/PID/stat line (field 19; the name before it may hold spaces)."""
    fields = stat.rpartition(")")[2].split()
    try:
        return int(fields[16])  # fields[0] is field 3, the state
    except (IndexError, ValueError):
        raise BenchError(f"not a /proc/PID/stat line: {stat[:120]!r}") from None


def autogroup(text: str) -> tuple[str, int] | None:
    """The group and its nice value in /proc/PID/autogroup (``/autogroup-42 nice -5``).

    None for an empty file: the process is in the root autogroup, which the kernel does not
    print, as every process is whose session never left the boot one (a child of an init
    that makes no sessions, as a CI runner may be). The scheduler weighs each process of
    that group by its own nice value, beside the other groups; its weight cannot be set.
    """
    match text.split():
        case []:
            return None
        case [group, "nice", nice] if nice.lstrip("-").isdigit():
            return group, int(nice)
    raise BenchError(f"not a /proc/PID/autogroup line: {text[:120]!r}")


def autogroup_of(pid: int | str, proc: Path = PROC) -> tuple[str, int] | None:
    """*pid*'s autogroup and its nice value; None in the root one, or with no autogroups
    (CONFIG_SCHED_AUTOGROUP off)."""
    try:
        return autogroup((proc / str(pid) / "autogroup").read_text())
    except FileNotFoundError:
        return None


def weights(pids: Iterable[int], proc: Path = PROC) -> list[Weight]:
    """The distinct weights of every thread of *pids*, against the bench's own autogroup."""
    mine = autogroup_of("self", proc)
    found: set[Weight] = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            group = autogroup_of(pid, proc)
            for task in (proc / str(pid) / "task").iterdir():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    nice = stat_nice((task / "stat").read_text())
                    found.add(
                        Weight(
                            nice,
                            None if group is None else group[1],
                            group is not None and (mine is None or group[0] != mine[0]),
                        )
                    )
    return sorted(found)


def cgroup_weights(cgroups: Iterable[Path]) -> list[dict[str, Any]]:
    """The distinct weights of the processes in *cgroups*, as the results document has them."""
    pids = [int(pid) for c in cgroups for pid in (c / "cgroup.procs").read_text().split()]
    return [asdict(w) for w in weights(pids)]
