"""Helpers for tests that drive real labs through the smesh CLI."""

from __future__ import annotations

import collections.abc
import contextlib
import datetime as dt
import json
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from smesh.jsonlines import whole_records
from smesh.lab import probe, state

SMESH = [sys.executable, "-m", "smesh"]


def smesh(
    *args: str, check: bool = True, timeout: float = 120, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run the smesh CLI exactly as a user would."""
    proc = subprocess.run(
        [*SMESH, *args], capture_output=True, text=True, timeout=timeout, check=False, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"smesh {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def access(lab: Lab, node: str) -> list[dict[str, Any]]:
    """The access-log records of *node*'s process agent so far (``lab up``, ``--install
    processes``), whole lines only: the agent may be writing the last one."""
    log = state.directory(lab.name) / node / "agent.log"
    return [r for r in whole_records(log) if r.get("logger") == "smesh.access"]


def started(record: dict[str, Any]) -> float:
    """When an access record's connection started (epoch seconds; the log line is written
    when it closed, to the millisecond)."""
    closed = dt.datetime.fromisoformat(record["ts"]).timestamp()  # "...Z": UTC
    return closed - float(record["duration_s"])


def unique_name(prefix: str = "t") -> str:
    """A lab name no other run uses, so a leftover never breaks the next run."""
    return f"{prefix}{secrets.token_hex(3)}"


class Lab:
    """A lab built through the CLI, with helpers to run things in its pods."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._background: list[subprocess.Popen[bytes]] = []

    def status(self) -> dict[str, Any]:
        return json.loads(smesh("lab", "status", "--name", self.name, "--json").stdout)

    def pod(self, name: str) -> dict[str, Any]:
        return next(p for p in self.status()["pods"] if p["name"] == name)

    def exec(self, member: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run *argv* in a pod (or node) and wait for it."""
        kw.setdefault("timeout", 60)
        return subprocess.run(
            [*SMESH, "lab", "exec", "--name", self.name, member, "--", *argv],
            capture_output=True,
            text=True,
            check=False,
            **kw,
        )

    def spawn(self, member: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start *argv* in a pod (or node) in the background; stopped at teardown."""
        proc = subprocess.Popen(
            [*SMESH, "lab", "exec", "--name", self.name, member, "--", *argv], **kw
        )
        self._background.append(proc)
        return proc

    def wait_tcp(self, member: str, host: str, port: int, timeout: float = 10) -> None:
        """Wait until a server really answers on host:port (through the mesh, if on)."""
        probe.wait_tcp(self.name, member, host, port, timeout)

    def agent_trouble(self, lines: int = 40) -> str:
        """The last warnings and errors of each of the lab's agents (process agents' logs
        and agent pods' container logs), for the report of a failed test: the lab and its
        logs are gone once its fixture brought it down."""
        from smesh.lab import state  # noqa: PLC0415 - only when a test failed

        out: list[str] = []
        for log in sorted(state.directory(self.name).rglob("agent.log")):
            trouble = [
                line
                for line in log.read_text(errors="replace").splitlines()
                if '"level": "warning"' in line or '"level": "error"' in line
            ]
            out.append(f"--- {log} ({len(trouble)} warnings and errors, last {lines})")
            out += trouble[-lines:]
        return "\n".join(out)

    def stop_background(self) -> None:
        for proc in self._background:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self._background.clear()


LabFactory = collections.abc.Callable[..., Lab]


class Lines:
    """Every line a process prints, collected as it comes (so its pipe never fills)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> None:
        self._thread.join(10)


#: A tcpdump line's addresses and ports: ``IP 1.2.3.4.5678 > 5.6.7.8.80:``.
PACKET = re.compile(r"\bIP6? (\S+)\.(\d+) > (\S+)\.(\d+):")


def endpoints(line: str) -> tuple[str, int, str, int] | None:
    """A tcpdump line's (source, port, destination, port); None for a line of payload.
    Never a search for digits in the line: its timestamp (``09.808085``) holds any."""
    found = PACKET.search(line)
    if found is None:
        return None
    return found[1], int(found[2]), found[3], int(found[4])


def on_port(line: str, port: int) -> bool:
    """Whether *line* is a packet to or from *port*."""
    found = endpoints(line)
    return found is not None and port in (found[1], found[3])


def between(line: str, ip: str, port: int) -> bool:
    """Whether *line* is a packet of *ip* to or from *port* of another address."""
    found = endpoints(line)
    if found is None:
        return False
    src, sport, dst, dport = found
    return (src == ip and dport == port) or (dst == ip and sport == port)


@contextlib.contextmanager
def sniffing(
    lab: Lab,
    member: str,
    interface: str = "eth0",
    *,
    payloads: bool = False,
    expression: Sequence[str] = ("tcp",),
) -> collections.abc.Iterator[Lines]:
    """tcpdump on *member*'s *interface*: a line per packet (and its payload as ASCII, -A)."""
    argv = ["tcpdump", "-i", interface, "-n", "-l", *(["-A"] if payloads else []), *expression]
    proc = lab.spawn(
        member, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
    )
    assert proc.stderr is not None
    said = [proc.stderr.readline()]
    while "listening on" not in said[-1] and said[-1] and len(said) < 5:
        said.append(proc.stderr.readline())  # a notice or two first
    assert f"listening on {interface}" in said[-1], said
    packets = Lines(proc.stdout)
    try:
        yield packets
    finally:
        time.sleep(0.5)  # what is in flight reaches tcpdump
        proc.terminate()
        proc.wait(timeout=10)
        packets.join()
