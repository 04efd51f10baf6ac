"""Run the demo's actors in lab pods, and record and judge what crossed the wire."""

from __future__ import annotations

import io
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt

from smesh.errors import SmeshError

TLS_CONTENT_TYPES = {20, 21, 22, 23}
TLS_MAX_RECORD = 2**14 + 256


class DemoError(SmeshError):
    """A step of the demo could not run."""


def in_member(lab: str, member: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs *argv* inside a lab pod or node."""
    return [sys.executable, "-m", "smesh", "lab", "exec", "--lab", lab, member, "--", *argv]


@dataclass
class Capture:
    """tcpdump on a node's fabric interface: what an attacker on the wire would see."""

    proc: subprocess.Popen[str]
    path: Path
    lab: str
    node: str

    @classmethod
    def start(cls, lab: str, node: str, path: Path) -> Capture:
        argv = [
            "tcpdump",
            "--immediate-mode",
            "-Z",
            "root",
            "-i",
            "eth0",
            "-nn",
            "-U",
            "-w",
            str(path),
            "tcp",
        ]
        proc = subprocess.Popen(
            in_member(lab, node, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # "listening on eth0, ..." once the capture is armed
            if "listening on" in line:
                return cls(proc, path, lab, node)
            seen.append(line.strip())
        proc.kill()
        raise DemoError(f"tcpdump did not start on {node}: {' '.join(seen) or 'no output'}")

    def stop(self) -> bytes:
        time.sleep(0.3)  # let the last packets reach the file
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        return self.path.read_bytes()

    def text(self, secret: str, limit: int = 12) -> list[str]:
        """One line per packet as tcpdump prints it, marking where *secret* is readable."""
        argv = ["tcpdump", "-r", str(self.path), "-nn", "-A", "-q", "-t"]
        out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
        lines: list[str] = []
        for line in out.splitlines():
            if line.startswith("IP"):
                lines.append(line)
            elif secret in line and lines:
                lines[-1] += f"   <- {secret!r} in clear"
        return lines[:limit]


@dataclass(frozen=True)
class WireSummary:
    packets: int
    ports: frozenset[int]  # every TCP port seen, both ends
    payload_bytes: int
    plaintext_seen: bool
    tls_records: int  # records that parsed in the payload streams
    all_tls: bool  # every payload byte belongs to a well-formed TLS record


def _tls_records(stream: bytes) -> int | None:
    """How many whole TLS records *stream* is made of, or None if it is not TLS."""
    count, pos = 0, 0
    while pos < len(stream):
        if len(stream) - pos < 5:
            return None
        kind, major, length = (
            stream[pos],
            stream[pos + 1],
            struct.unpack_from("!H", stream, pos + 3)[0],
        )
        if kind not in TLS_CONTENT_TYPES or major != 3 or length > TLS_MAX_RECORD:
            return None
        pos += 5 + length
        count += 1
    return count if pos == len(stream) else None


def summarize(pcap: bytes, secret: bytes) -> WireSummary:
    """Judge a capture: is *secret* visible, and is every payload byte inside TLS records?"""
    flows: dict[tuple[bytes, int, bytes, int], dict[int, bytes]] = {}
    ports: set[int] = set()
    packets = payload_bytes = 0
    for _ts, frame in dpkt.pcap.Reader(io.BytesIO(pcap)):
        ip = dpkt.ethernet.Ethernet(frame).data
        if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) or not isinstance(ip.data, dpkt.tcp.TCP):
            continue
        tcp = ip.data
        packets += 1
        ports.update((tcp.sport, tcp.dport))
        if tcp.data:
            payload_bytes += len(tcp.data)
            key = (bytes(ip.src), tcp.sport, bytes(ip.dst), tcp.dport)
            flows.setdefault(key, {})[tcp.seq] = bytes(tcp.data)  # retransmits overwrite
    streams = [b"".join(seg for _seq, seg in sorted(f.items())) for f in flows.values()]
    counts = [_tls_records(s) for s in streams]
    return WireSummary(
        packets=packets,
        ports=frozenset(ports),
        payload_bytes=payload_bytes,
        plaintext_seen=any(secret in s for s in streams),
        tls_records=sum(c or 0 for c in counts),
        all_tls=bool(streams) and all(c is not None for c in counts),
    )
