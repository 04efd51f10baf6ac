"""Reading what the measuring tools print (iperf3 JSON, sockperf text, /proc)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from smesh.bench.errors import BenchError

_PERCENTILE = re.compile(r"percentile\s+(\d+\.\d+)\s*=\s*([\d.]+)")
_OBSERVATIONS = re.compile(r"Total\s+(\d+)\s+observations")
_TOTAL_RUN = re.compile(r"\[Total Run\].*?SentMessages=(\d+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Throughput:
    gbps: float
    bytes: int


def iperf3(text: str) -> Throughput:
    """The receiver's view of an ``iperf3 -J`` run (what arrived, not what was queued)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BenchError(f"iperf3 did not print JSON: {text[:200]!r}") from exc
    if "error" in doc:
        raise BenchError(f"iperf3 failed: {doc['error']}")
    try:
        received = doc["end"]["sum_received"]
        return Throughput(received["bits_per_second"] / 1e9, int(received["bytes"]))
    except (KeyError, TypeError) as exc:
        raise BenchError(f"iperf3 JSON lacks end.sum_received: {exc}") from exc


@dataclass(frozen=True)
class Latency:
    p50_us: float
    p99_us: float
    round_trips: int  # observed: the percentiles' sample, without the warm-up
    #: Every ping sent, the first 400 ms' warm-up included (0 if not printed): what the
    #: proxies carried. Per-message counts (CPU, system calls) divide by this, not by
    #: ``round_trips``: a 2 s run observes only 1.55 s of its round trips, and dividing by
    #: those read as 1.3 system calls per message where the agent made 1.0 (issue 23).
    sent: int = 0


def sockperf(text: str) -> Latency:
    """Percentiles of a ``sockperf ping-pong --full-rtt`` run."""
    found = {float(p): float(v) for p, v in _PERCENTILE.findall(text)}
    count = _OBSERVATIONS.search(text)
    if 50.0 not in found or 99.0 not in found or count is None:
        raise BenchError(f"sockperf printed no percentiles: {text[-300:]!r}")
    total = _TOTAL_RUN.search(text)
    sent = int(total.group(1)) if total is not None else 0
    return Latency(found[50.0], found[99.0], int(count.group(1)), sent)


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User plus system CPU of a process and all its threads so far; with *children*, also
    of the children it has waited for (kube-proxy's ``nft`` runs)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"process {pid} reports no resident memory (a zombie?)")
