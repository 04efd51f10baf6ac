"""The seed README's story, told twice: pod-1 on node-1 says hello to pod-3 on node-2.

Act 1 has no mesh: the message crosses the node-to-node link in clear. Act 2 has smesh:
the same app sends the same bytes, pod-3 receives them unchanged, and the wire carries only
TLS records to the tunnel port. Every claim is checked; the verdict table says which held.
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smesh import jsonlines
from smesh.cli.output import table
from smesh.demo.wire import Capture, WireSummary, in_member, summarize
from smesh.lab import api, probe, state

MESSAGE = "Hello from pod-01"
PORT = 8080
TUNNEL_PORT = 18001

Say = Callable[[str], None]


@dataclass
class Check:
    what: str
    expected: str
    seen: str

    @property
    def ok(self) -> bool:
        return self.expected == self.seen


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    def add(self, what: str, expected: str, seen: object) -> None:
        self.checks.append(Check(what, expected, str(seen)))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def render(self) -> str:
        return table(
            ["CHECK", "EXPECTED", "SEEN", ""],
            [[c.what, c.expected, c.seen, "ok" if c.ok else "FAIL"] for c in self.checks],
        )


@dataclass
class Observed:
    received: str
    wire: WireSummary
    dump: list[str]
    trace: list[str] = field(default_factory=list)
    access: dict[str, Any] | None = None


def _tell(name: str, mesh: bool, workdir: Path, say: Say) -> Observed:
    """Run the story once in lab *name*: a server in pod-3, pod-1 sends, tcpdump watches."""
    topo = api.up(name, nodes=2, pods_per_node=2, mesh=mesh)
    try:
        server_ip = str(topo.pod("pod-3").ip4)
        server = subprocess.Popen(  # fork: the readiness probe is a connection too
            in_member(
                name, "pod-3", ["socat", "-u", f"TCP-LISTEN:{PORT},reuseaddr,fork", "STDOUT"]
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        probe.wait_tcp(name, "pod-1", server_ip, PORT)
        tracer = None
        if mesh:
            argv = ["smesh", "trace", "--lab", name, "--node", "node-1", "--pod", "pod-1"]
            tracer = subprocess.Popen(
                [*_python(), *argv[1:], "--count", "1", "--timeout", "20"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        capture = Capture.start(name, "node-1", workdir / f"{name}.pcap")
        say(f"  pod-1 (node-1) sends {MESSAGE!r} to pod-3 (node-2) at {server_ip}:{PORT}")
        client = ["socat", "-u", "STDIN", f"TCP:{server_ip}:{PORT}"]
        subprocess.run(in_member(name, "pod-1", client), input=MESSAGE, text=True, check=True)
        received = _read_until(server, MESSAGE)
        pcap = capture.stop()
        observed = Observed(
            received.strip(), summarize(pcap, MESSAGE.encode()), capture.text(MESSAGE)
        )
        if tracer is not None:
            out, _ = tracer.communicate(timeout=25)
            observed.trace = [line for line in out.splitlines() if " -> " in line]
            observed.access = _access_record(name, f"{server_ip}:{PORT}")
        return observed
    finally:
        api.down(name)


def _read_until(server: subprocess.Popen[str], text: str, timeout: float = 15) -> str:
    """What the server printed until *text* arrived (or the timeout); then stop it."""
    assert server.stdout is not None
    os.set_blocking(server.stdout.fileno(), False)
    seen = ""
    deadline = time.monotonic() + timeout
    while text not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([server.stdout], [], [], 0.1)
        if ready:
            seen += server.stdout.read() or ""
    server.kill()
    server.wait()
    return seen


def _python() -> list[str]:
    import sys  # noqa: PLC0415

    return [sys.executable, "-m", "smesh"]


def _access_record(lab: str, destination: str, wait: float = 5.0) -> dict[str, Any] | None:
    """The access-log record of the message's connection: the last one to *destination*.

    The agent writes it once it has seen both ends close, which may follow the server's
    receipt of the message by a moment: looked for until *wait* seconds have passed.
    """
    log = state.directory(lab) / "node-1" / "agent.log"
    deadline = time.monotonic() + wait
    while True:
        found = [
            record
            for record in jsonlines.whole_records(log)
            if record.get("logger") == "smesh.access"
            and record.get("destination") == destination
            and record.get("direction") == "outbound"
            and record.get("bytes_sent", 0) > 0  # not the readiness probe's connect
        ]
        if found or time.monotonic() >= deadline:
            return found[-1] if found else None
        time.sleep(0.1)


def _show(observed: Observed, say: Say) -> None:
    say("  what tcpdump sees on node-1's link to the fabric:")
    for line in observed.dump:
        say(f"    {line}")
    wire = observed.wire
    if wire.all_tls:
        say(
            f"    ... {wire.payload_bytes} payload bytes, all inside {wire.tls_records} TLS records"
        )
    say(f"  pod-3 received: {observed.received!r}")


def plaintext_act(report: Report, workdir: Path, say: Say) -> None:
    name = f"demo{secrets.token_hex(2)}"
    say(f"Act 1 — without smesh (lab {name!r}): pods talk plain TCP.")
    seen = _tell(name, mesh=False, workdir=workdir, say=say)
    _show(seen, say)
    report.add("no mesh: pod-3 received the message", MESSAGE, seen.received)
    report.add(
        "no mesh: message readable on the wire", "yes", "yes" if seen.wire.plaintext_seen else "no"
    )


def mesh_act(report: Report, workdir: Path, say: Say) -> None:
    name = f"demo{secrets.token_hex(2)}"
    say("")
    say(f"Act 2 — with smesh (lab {name!r}): the same app, unchanged.")
    seen = _tell(name, mesh=True, workdir=workdir, say=say)
    _show(seen, say)
    say("  smesh trace on node-1:")
    for line in seen.trace:
        say(f"    {line}")
    access = seen.access or {}
    if access:
        say(
            f"  access log: {access['identity']} -> {access['peer_identity']}, "
            f"{access['bytes_sent']} bytes sent, result {access['result']}"
        )
    wire = seen.wire
    ports = sorted(wire.ports - {TUNNEL_PORT})
    report.add("mesh: pod-3 received the same bytes", MESSAGE, seen.received)
    report.add("mesh: message readable on the wire", "no", "yes" if wire.plaintext_seen else "no")
    report.add(
        "mesh: wire carries only TLS records",
        "yes",
        "yes" if wire.all_tls and wire.tls_records > 0 else f"no ({wire.payload_bytes} bytes)",
    )
    report.add(
        "mesh: every packet on tunnel port 18001",
        "yes",
        "yes"
        if TUNNEL_PORT in wire.ports and len(ports) <= 1 and PORT not in ports
        else f"no {ports}",
    )
    report.add(
        "mesh: connect intercepted (smesh trace)",
        f"pod-1 -> {access.get('destination', '198.18.2.2:8080')} captured",
        _trace_summary(seen.trace),
    )
    report.add(
        "mesh: identities (access log)",
        "pod-1 -> pod-3",
        _identities(access),
    )
    report.add("mesh: bytes delivered", str(len(MESSAGE)), access.get("bytes_sent", "?"))


def _trace_summary(lines: list[str]) -> str:
    for line in lines:
        parts = line.split()
        if len(parts) >= 5 and parts[-1] == "captured":
            return f"{parts[1].split('/')[-1]} -> {parts[-2]} captured"
    return "no event"


def _identities(access: dict[str, Any]) -> str:
    if not access:
        return "no record"
    me = str(access.get("identity", "")).rsplit("/", 1)[-1]
    peer = str(access.get("peer_identity", "")).rsplit("/", 1)[-1]
    return f"{me} -> {peer}"


def run(say: Say = print) -> bool:
    report = Report()
    with tempfile.TemporaryDirectory(prefix="smesh-demo-") as tmp:
        plaintext_act(report, Path(tmp), say)
        mesh_act(report, Path(tmp), say)
    say("")
    say(report.render())
    say("")
    say("demo passed" if report.ok else "demo FAILED: see the checks marked FAIL above")
    return report.ok
