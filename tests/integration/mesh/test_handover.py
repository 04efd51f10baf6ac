"""Upgrading an agent drops nothing: no failed connect, no cut connection, nothing leaks.

Issue 19's acceptance at its full size. A client in pod-1 (node-1) holds 20 long-lived
connections to an echo server in pod-3 (node-2), each exchanging a message every 10 ms,
opens 20 new connections a second, and sends one bulk transfer of 200 MB (spread over
30 s, hashed by sha256 on both sides), while node-1's and node-2's agents are upgraded
alternately, 5 times each (`lab upgrade-agent`, and `lab restart-agent`, which hands over
the same way). Every connect must succeed, every long-lived connection answer every message
in order, and the transfer's hash match; a capture on node-1's link must never see the
load's marker in plain text, and both admin listeners (scrape, debug) of each agent must
answer every request all along. Afterwards the old agents exit once the long-lived connections
close, leaving one agent per node, and neither the agents' descriptors nor the pinned
capture grew. The load is :mod:`smesh.bench.steady`, the one ``smesh bench --only
upgrade`` runs.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from smesh.agent import client as admin_client
from smesh.bench import steady
from smesh.capture import pins
from smesh.lab import state
from smesh.linux import cgroups
from tests.integration.labkit import Lab, LabFactory, Lines, on_port, smesh, sniffing
from tests.integration.mesh.test_agent import node, wait

STEADY = [sys.executable, "-m", "smesh.bench.steady"]
POD3 = "198.18.2.2"
PORT = 7070
BULK_PORT = 7071
MARKER = steady.MARKER
UPGRADES = 5  # per node
LONG = 20
BULK_BYTES = 200_000_000
BULK_SECONDS = 30  # overlaps most of the 10 upgrades (3 to 4 s each here, under this load)


def descriptors(pid: int) -> collections.Counter[str]:
    """The agent's open descriptors by kind: socket, a BPF object, a file, ..."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        kinds[target.split(":")[0] if ":" in target else "file"] += 1
    return kinds


def agent_processes(lab: Lab, node_name: str) -> list[int]:
    procs = cgroups.v2_root() / f"smesh-lab-{lab.name}" / node_name / "agent" / "cgroup.procs"
    return [int(line) for line in procs.read_text().split()]


def link_pins(lab: Lab, node_name: str) -> set[str]:
    with pins.PinnedCapture(state.bpf_pin_dir(lab.name) / node_name) as pinned:
        return {str(pin) for pin, _info in pinned.links()}


def serve(lab: Lab) -> subprocess.Popen[str]:
    """The load's server in pod-3: an echo, and the bulk transfer's hashing sink."""
    server = lab.spawn(
        "pod-3",
        [*STEADY, "serve", str(PORT), "--bulk-port", str(BULK_PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "READY"
    return server


class AdminProbe:
    """A scraper and a debug client asking every node's agent, each in turn, until stopped:
    during hand-overs both admin listeners must answer every request (a refused connect or
    a timeout is what a kubelet's liveness probe or Prometheus would see fail)."""

    ASKS = (  # (port, path): the scrape listener's and the debug listener's
        (15020, "/healthz"),
        (15020, "/metrics"),
        (15000, "/debug/config"),
    )

    def __init__(self, lab: Lab, nodes: tuple[str, ...]) -> None:
        self.netns = [str(node(lab, name)["netns"]) for name in nodes]
        self.asked = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AdminProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            for netns in self.netns:
                for port, path in self.ASKS:
                    try:
                        reply = admin_client.get("127.0.0.1", port, path, netns=netns, timeout=10)
                    except admin_client.AdminUnreachable as exc:
                        self.failures.append(f"{netns} {port}{path}: {exc}")
                    else:
                        if reply.status != 200:
                            self.failures.append(f"{netns} {port}{path}: {reply.status}")
                    self.asked += 1
            self._stop.wait(0.2)


def test_upgrading_both_agents_drops_no_connect_and_cuts_no_connection(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory()
    nodes = ("node-1", "node-2")
    before = {n: descriptors(node(lab, n)["agent_pid"]) for n in nodes}
    pins_before = {n: link_pins(lab, n) for n in nodes}
    serve(lab)
    stop = tmp_path / "stop"
    argv = [*STEADY, "client", POD3, str(PORT), str(stop), "--long", str(LONG)]
    argv += ["--interval", "0.01", "--bulk-port", str(BULK_PORT)]
    argv += ["--bulk-bytes", str(BULK_BYTES), "--bulk-seconds", str(BULK_SECONDS)]
    with sniffing(lab, "node-1", payloads=True) as packets:
        client = lab.spawn("pod-1", argv, stdout=subprocess.PIPE, text=True)
        out = Lines(client.stdout)
        wait(lambda: out.lines[:1] == ["READY\n"], timeout=30)
        time.sleep(1)  # load before the first upgrade
        with AdminProbe(lab, nodes) as probe:
            for round_ in range(UPGRADES):
                for name in nodes:
                    verb = "upgrade-agent" if round_ % 2 == 0 else "restart-agent"
                    smesh("lab", verb, "--name", lab.name, name)
                    time.sleep(0.5)
        stop.touch()  # the client stops once the bulk transfer has ended too
        client.wait(timeout=120)
        out.join()
    report = json.loads(out.lines[-1])
    # both admin listeners answered all along (a few requests per hand-over, at least)
    assert probe.failures == [], probe.failures
    assert probe.asked > 10 * UPGRADES * len(nodes), probe.asked
    assert report["connect_failures"] == [], report
    assert report["long_failures"] == [], report
    assert report["connected"] == report["connects"] > 200, report
    assert report["bulk"]["sha256_ok"], report["bulk"]
    # every long-lived connection answered all along (a message each 10 ms, give or take)
    assert report["messages"] > report["long_lived"] * report["seconds"] * 10, report
    assert any(on_port(line, 18001) for line in packets.lines), "the capture saw no tunnel"
    plain = [line for line in packets.lines if MARKER in line]
    assert plain == [], f"the marker in plain text on node-1's link: {plain[:3]}"

    # The long-lived connections closed: the old agents finish and exit, one agent per
    # node is left, the one the lab records.
    for name in nodes:
        current = node(lab, name)["agent_pid"]
        wait(lambda n=name, c=current: agent_processes(lab, n) == [c], timeout=30)  # type: ignore[misc]
        assert node(lab, name)["agents_lingering"] == []
        assert node(lab, name)["agent_health"] == "ready"
        after = descriptors(current)
        # Nothing leaked: the same BPF handles and files; sockets may differ by the few
        # idle carriers the load left (they close after a minute).
        assert {k: v for k, v in after.items() if k != "socket"} == {
            k: v for k, v in before[name].items() if k != "socket"
        }, (before[name], after)
        assert after["socket"] <= before[name]["socket"] + 6, (before[name], after)
        assert link_pins(lab, name) == pins_before[name]


def test_an_old_agent_lingers_for_its_open_connection_and_lab_down_stops_it(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory()
    serve(lab)
    old = node(lab, "node-1")["agent_pid"]
    stop = tmp_path / "stop"
    client = lab.spawn(
        "pod-1",
        [*STEADY, "client", POD3, str(PORT), str(stop), "--long", "1", "--rate", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    out = Lines(client.stdout)
    wait(lambda: out.lines[:1] == ["READY\n"], timeout=30)
    smesh("lab", "upgrade-agent", "--name", lab.name, "node-1")
    time.sleep(1)
    # The old agent still serves the long-lived connection; the lab knows both.
    assert node(lab, "node-1")["agents_lingering"] == [old]
    assert sorted(agent_processes(lab, "node-1")) == sorted([old, node(lab, "node-1")["agent_pid"]])
    smesh("lab", "down", "--name", lab.name)  # SIGINT: it drains (5 s in the lab) and exits
    assert state.start_time_of(old) is None  # gone (or a zombie its reaper has not seen)
    client.kill()
    client.wait(timeout=10)
