"""``smesh bench --only upgrade``: what agent upgrades and crashes cost a steady load.

One meshed 2-node process lab of its own (torn down even when a measurement fails), the
load of :mod:`smesh.bench.steady` from pod-1 (node-1) to pod-3 (node-2), two phases one
after another, each with a fresh client and a packet capture on both nodes' links:

1. upgrade: node-1's and node-2's agents upgraded alternately, ``rounds`` times each
   (``upgrade-agent`` and ``restart-agent`` in turn: both hand the node over); the goal is
   nothing lost. Afterwards the old agents must exit once the load's connections close.
2. kill9: the same load while each node's agent is killed with SIGKILL ``rounds`` times,
   alternating, and restarted at once (``restart-agent`` on a dead agent, as a supervisor
   would); this phase reports what a crash costs, it has no goal but no plain text.

The capture counts packets of the load's own ports on the nodes' links: each one is app
traffic that left a pod outside the tunnel.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smesh.bench import upgradefigures
from smesh.bench.errors import BenchError
from smesh.bench.processes import Started
from smesh.errors import SmeshError

Progress = Callable[[str], None]

PORT = 7070
BULK_PORT = 7071
CLIENT_POD = "pod-1"
SERVER_POD = "pod-3"
STEADY = [sys.executable, "-m", "smesh.bench.steady"]


@dataclass(frozen=True)
class UpgradePlan:
    nodes: int = 2
    rounds: int = 5  # upgrades (then kills) of each node's agent, alternating
    long: int = 20
    rate: float = 20.0
    interval: float = 0.01
    bulk_mb: int = 200
    bulk_seconds: float = 30.0  # spreads the transfer over most of the upgrades
    pause: float = 0.5  # seconds of load between two upgrades
    kill_pause: float = 2.0  # between two kills: each kill's refusal window stands apart

    @classmethod
    def quick(cls) -> UpgradePlan:
        return cls(rounds=2, long=5, bulk_mb=50, bulk_seconds=8.0)


@dataclass
class _Lab:
    name: str
    nodes: list[str]
    server_ip: str
    workdir: Path


def _wait(what: str, condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)


def _agent_processes(lab: _Lab, node: str) -> list[int]:
    """Every process in the node's agent cgroup: the serving agent and any lingering one."""
    from smesh.lab import api  # noqa: PLC0415
    from smesh.linux import cgroups  # noqa: PLC0415

    _saved, topo = api.load(lab.name)
    procs = cgroups.v2_root() / topo.node(node).agent_cgroup / "cgroup.procs"
    return [int(pid) for pid in procs.read_text().split()]


@contextlib.contextmanager
def _captures(lab: _Lab, phase: str) -> Iterator[dict[str, Path]]:
    """tcpdump on each node's link, only the load's ports and the tunnel's SYNs."""
    expression = (
        f"tcp and (port {PORT} or port {BULK_PORT} or "
        f"(port {upgradefigures.TUNNEL_PORT} and tcp[tcpflags] & tcp-syn != 0))"
    )
    logs = {node: lab.workdir / f"tcpdump-{phase}-{node}.log" for node in lab.nodes}
    started: list[Started] = []
    try:
        for node, log in logs.items():
            argv = ["tcpdump", "-i", "eth0", "-n", "-l", expression]
            started.append(Started(lab.name, node, argv, log))
            _wait(
                f"tcpdump on {node}",
                lambda log=log: "listening on" in log.read_text(errors="replace"),  # type: ignore[misc]
                15,
            )
        yield logs
    finally:
        time.sleep(0.5)  # what is in flight reaches tcpdump
        for process in started:
            process.stop()


def _client(lab: _Lab, plan: UpgradePlan, phase: str) -> tuple[Started, Path, Path]:
    stop = lab.workdir / f"stop-{phase}"
    log = lab.workdir / f"steady-{phase}.log"
    argv = [*STEADY, "client", lab.server_ip, str(PORT), str(stop), "--long", str(plan.long)]
    argv += ["--rate", str(plan.rate), "--interval", str(plan.interval), "--reconnect"]
    argv += ["--bulk-port", str(BULK_PORT), "--bulk-bytes", str(plan.bulk_mb * 1_000_000)]
    argv += ["--bulk-seconds", str(plan.bulk_seconds), "--max-seconds", "600"]
    client = Started(lab.name, CLIENT_POD, argv, log)

    def ready() -> bool:
        if client.proc.poll() is not None:
            raise BenchError(f"the load exited: {log.read_text(errors='replace')[-400:]}")
        return "READY" in log.read_text(errors="replace").splitlines()

    _wait("the load's long-lived connections", ready, 30)
    return client, stop, log


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _kill_and_restart(lab: _Lab, node: str) -> upgradefigures.Kill:
    """SIGKILL *node*'s agent and restart it at once, as a supervisor would; in wall-clock
    time (the load's report is in wall-clock time too)."""
    from smesh.lab import api  # noqa: PLC0415

    saved, _topo = api.load(lab.name)
    agent = saved.agents[node]
    killed = time.time()
    os.kill(agent.pid, signal.SIGKILL)
    _wait(f"the killed agent of {node} gone", lambda: not agent.alive(), 10)
    new = api.restart_agent(lab.name, node)
    ready, uptime = time.time(), _uptime()
    started = upgradefigures.process_start(new.start_time, os.sysconf("SC_CLK_TCK"), uptime, ready)
    return upgradefigures.Kill(node, killed, started, ready)


def _changes(
    lab: _Lab, plan: UpgradePlan, phase: str, progress: Progress
) -> tuple[list[float], list[upgradefigures.Kill]]:
    """Upgrade (or kill and restart) each node's agent, alternating: how long each took."""
    from smesh.lab import api  # noqa: PLC0415

    durations: list[float] = []
    kills: list[upgradefigures.Kill] = []
    for round_ in range(plan.rounds):
        for node in lab.nodes:
            if phase == "upgrade":
                verb = "upgrade-agent" if round_ % 2 == 0 else "restart-agent"
                started = time.monotonic()
                api.restart_agent(lab.name, node, verb)
                durations.append(time.monotonic() - started)
            else:
                verb = "kill -9"
                kills.append(_kill_and_restart(lab, node))
                durations.append(kills[-1].ready - kills[-1].killed)
            progress(f"{phase}: {verb} {node}: {durations[-1]:.1f} s")
            time.sleep(plan.pause if phase == "upgrade" else plan.kill_pause)
    return durations, kills


def _phase(lab: _Lab, plan: UpgradePlan, phase: str, progress: Progress) -> dict[str, Any]:
    with _captures(lab, phase) as captures:
        client, stop, log = _client(lab, plan, phase)
        try:
            time.sleep(1.0)  # load before the first change
            durations, kills = _changes(lab, plan, phase, progress)
            stop.touch()  # the client ends once the bulk transfer has ended too
            try:
                client.proc.wait(plan.bulk_seconds + 120)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"{phase}: the load did not end within {plan.bulk_seconds + 120:.0f} s "
                    f"of its stop file (its output: {log})"
                ) from None
        finally:
            client.stop()
    report = upgradefigures.load_report(log.read_text(errors="replace"))
    plain = tunnel = 0
    for capture in captures.values():
        counts = upgradefigures.packet_counts(
            capture.read_text(errors="replace").splitlines(), (PORT, BULK_PORT)
        )
        plain, tunnel = plain + counts[0], tunnel + counts[1]
    if tunnel == 0:
        raise BenchError(f"{phase}: the captures saw no tunnel connection: wrong link?")
    figures = upgradefigures.phase_figures(phase, report, plain)
    refusals: list[dict[str, Any]] = []
    if phase == "kill9":
        figures["kill9_restart_ms"] = upgradefigures.median_ms(durations)
        paired = upgradefigures.refusals(kills, report["failure_windows"])
        kinds = upgradefigures.errors_by_kill(kills, report["connect_failures"])
        refusals = [
            {"node": k.node, **asdict(r), "errors": e}
            for k, r, e in zip(kills, paired, kinds, strict=True)
        ]
        after_start = [r.after_start_ms for r in paired if r.after_start_ms is not None]
        if after_start:
            figures["kill9_serving_after_start_ms"] = statistics.median(after_start)
    # The old agents serve what they held until it closes; the load closed it: one agent
    # per node must be left.
    with contextlib.suppress(BenchError):
        _wait(
            "one agent per node",
            lambda: all(len(_agent_processes(lab, n)) == 1 for n in lab.nodes),
            60,
        )
    agents = {node: len(_agent_processes(lab, node)) for node in lab.nodes}
    if phase == "upgrade":
        figures["upgrade_agents_per_node"] = float(max(agents.values()))
    progress(
        f"{phase}: {report['connects']} connects, {report['failed_connects']} failed (longest "
        f"{report['longest_failure_ms']:.0f} ms), {report['long_cut']} long-lived cut, "
        f"bulk {report.get('bulk')}, {plain} plain-text packets, agents per node {agents}; "
        f"errors: connects {report['connect_errors']}, long-lived {report['cut_errors']}"
    )
    for refusal in refusals:
        progress(f"{phase}: {refusal}")
    report["long_failures"] = report["long_failures"][:20]
    report["connect_failures"] = report["connect_failures"][:1000]
    return {
        "figures": figures,
        "report": report,
        "seconds": [round(d, 2) for d in durations],
        "refusals": refusals,
        "agents_per_node": agents,
        "tunnel_syns": tunnel,
    }


def run(plan: UpgradePlan, workdir: Path, progress: Progress) -> dict[str, Any]:
    """Bring a meshed lab up, upgrade and kill its agents under load, tear it down."""
    import secrets  # noqa: PLC0415

    from smesh.lab import api  # noqa: PLC0415

    section: dict[str, Any] = {"plan": asdict(plan), "figures": {}, "notes": {}}
    name = f"benchu{secrets.token_hex(3)}"
    progress(f"building lab {name} ({plan.nodes} nodes, mesh on)")
    try:
        topo = api.up(name, nodes=plan.nodes, mesh=True)
    except Exception as exc:  # reported in the section; api.up cleaned up after itself
        section["failed"] = f"lab up failed: {exc}"
        return section
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        lab = _Lab(name, [n.name for n in topo.nodes], str(topo.pod(SERVER_POD).ip4), workdir)
        argv = [*STEADY, "serve", str(PORT), "--bulk-port", str(BULK_PORT)]
        server = Started(name, SERVER_POD, argv, workdir / "steady-server.log")
        try:
            server.wait_listening([PORT, BULK_PORT])
            for phase in upgradefigures.PHASES:
                try:
                    notes = _phase(lab, plan, phase, progress)
                except (SmeshError, OSError) as exc:
                    section["failed"] = section.get("failed", "") + f"{phase}: {exc}; "
                    progress(f"{phase} FAILED: {exc}")
                    continue
                section["notes"][phase] = notes
                section["figures"].update(notes.pop("figures"))
        finally:
            server.stop()
    finally:
        progress(f"tearing down {name}")
        api.down(name)
    return section
