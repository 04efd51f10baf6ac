"""The story: pod-1 on node-1 says hello to pod-3 on node-2, and we watch the wire."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from smesh.cli.output import table
from smesh.demo.wire import Capture, in_member
from smesh.lab import api

MESSAGE = "Hello from pod-01"
PORT = 8080


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

    def add(self, what: str, expected: str, seen: str) -> None:
        self.checks.append(Check(what, expected, seen))

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def render(self) -> str:
        return table(
            ["CHECK", "EXPECTED", "SEEN", ""],
            [[c.what, c.expected, c.seen, "ok" if c.ok else "FAIL"] for c in self.checks],
        )


def plaintext_act(report: Report, say: Callable[[str], None]) -> None:
    """Act 1: no mesh. The message crosses the node-to-node link in clear."""
    name = f"demo{secrets.token_hex(2)}"
    say(f"Act 1 — without smesh: lab {name!r}, 2 nodes, pods talk plain TCP.")
    topo = api.up(name, nodes=2, pods_per_node=2, mesh=False)
    try:
        server_ip = str(topo.pod("pod-3").ip4)
        server = subprocess.Popen(
            in_member(name, "pod-3", ["socat", "-u", f"TCP-LISTEN:{PORT},reuseaddr", "STDOUT"]),
            stdout=subprocess.PIPE,
            text=True,
        )
        capture = Capture.start(name, "node-1", f"tcp port {PORT}")
        say(f"  pod-1 (node-1) sends {MESSAGE!r} to pod-3 (node-2) at {server_ip}:{PORT}")
        client = ["socat", "-u", "STDIN", f"TCP:{server_ip}:{PORT},retry=50,interval=0.1"]
        subprocess.run(in_member(name, "pod-1", client), input=MESSAGE, text=True, check=True)
        received, _ = server.communicate(timeout=10)
        dump = capture.stop()
        say("  what tcpdump sees on node-1's link to the fabric:")
        for line in dump.splitlines():
            if MESSAGE in line or " IP " in line:
                say(f"    {line[:110]}")
        report.add("plain: pod-3 received the message", MESSAGE, received.strip())
        readable = any(MESSAGE in line for line in dump.splitlines())
        report.add("plain: message readable on the wire", "yes", "yes" if readable else "no")
    finally:
        api.down(name)


def run(say: Callable[[str], None] = print) -> bool:
    report = Report()
    plaintext_act(report, say)
    say("")
    say(report.render())
    say("")
    say("demo passed" if report.ok else "demo FAILED: see the checks marked FAIL above")
    return report.ok
