"""`smesh trace` streams the events of the connects a pod makes, as lines or JSON."""

from __future__ import annotations

import json
import re
import subprocess

from tests.integration.capture.conftest import Harness
from tests.integration.labkit import SMESH, smesh


def start_trace(h: Harness, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*SMESH, "trace", "--lab", h.lab.name, "--timeout", "60", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    h.procs.append(proc)
    assert proc.stderr is not None
    banner = proc.stderr.readline()  # printed once the ring buffers are open
    assert banner.startswith(f"tracing capture events of lab {h.lab.name!r}"), banner
    return proc


def test_trace_shows_the_events_of_a_test_connection(ebpf_captured: Harness) -> None:
    h = ebpf_captured
    h.listener("pod-1")
    trace = start_trace(h, "--pod", "pod-1", "--json", "--count", "2")
    h.client("pod-2", "tcp", "198.18.2.2", 80)  # another pod: filtered out by --pod
    assert h.client("pod-1", "tcp", "198.18.2.2", 80)["reply"] == "ORIG 198.18.2.2 80"
    h.client("pod-1", "tcp", "198.19.0.1", 7100)  # not in the mesh: refused, but traced
    out, _err = trace.communicate(timeout=30)
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["pod"], e["destination"], e["port"], e["decision"]) for e in events] == [
        ("pod-1", "198.18.2.2", 80, "captured"),
        ("pod-1", "198.19.0.1", 7100, "pass-not-mesh"),
    ]
    assert all(e["node"] == "node-1" and e["comm"].startswith("python") for e in events)
    assert all(e["pid"] > 0 and e["family"] == "ipv4" for e in events)


def test_trace_lines_read_like_a_log_and_have_one_reader(ebpf_captured: Harness) -> None:
    h = ebpf_captured
    h.listener("pod-3")
    trace = start_trace(h, "--node", "node-2", "--count", "1")
    second = smesh("trace", "--lab", h.lab.name, "--node", "node-2", check=False)
    assert second.returncode == 1
    assert second.stderr.strip().startswith("smesh: error: another `smesh trace` is already")
    assert len(second.stderr.strip().splitlines()) == 1
    h.client("pod-3", "tcp", "fd00:198:18:1::2", 443)
    out, _ = trace.communicate(timeout=30)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z node-2/pod-3 python\S*\[\d+\] "
        r"-> \[fd00:198:18:1::2\]:443 captured\n",
        out,
    ), out


def test_trace_says_what_to_do_when_nothing_is_captured(harness: Harness) -> None:
    proc = smesh("trace", "--lab", harness.lab.name, check=False)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"smesh: error: nothing is captured in lab {harness.lab.name!r}; run "
        f"`smesh capture attach --lab {harness.lab.name}` (or start the agents) first\n"
    )
