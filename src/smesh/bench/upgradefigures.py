"""The upgrade figures of ``smesh bench``: the load's report, packet counts, goals, the table.

Pure functions over text and numbers, so what "0 failed connects" is computed from is
unit-tested apart from the slow measuring in :mod:`smesh.bench.upgrade`.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smesh.bench.errors import BenchError
from smesh.bench.figuretable import GroupFigure, figure_table

#: The generated upgrade section of docs/benchmarks.md lies between these.
BEGIN = "<!-- bench:upgrade:begin -->"
END = "<!-- bench:upgrade:end -->"

PHASES = ("upgrade", "kill9")
TUNNEL_PORT = 18001


FIGURES = (
    GroupFigure(
        "upgrade_failed_connects",
        "",
        "new connections (request + echo) that failed while both agents were upgraded",
    ),
    GroupFigure(
        "upgrade_reset_streams",
        "",
        "long-lived connections (and the bulk transfer) cut by a reset, an EOF or a wrong "
        "or reordered answer during the upgrades",
    ),
    GroupFigure("upgrade_connects", "", "new connections made during the upgrades"),
    GroupFigure("upgrade_bulk_mb", "MB", "the bulk transfer's size, sent during the upgrades"),
    GroupFigure("upgrade_bulk_sha256_ok", "", "1 if the server's sha256 of the transfer matched"),
    GroupFigure(
        "upgrade_plaintext_packets",
        "",
        "packets of the load's ports on the nodes' links (not tunnel traffic), upgrades",
    ),
    GroupFigure(
        "upgrade_agents_per_node",
        "",
        "agent processes on the busiest node once the load has closed its connections "
        "(the old agents linger only while they serve a connection)",
    ),
    GroupFigure(
        "kill9_failed_connects", "", "new connections that failed while agents were killed"
    ),
    GroupFigure(
        "kill9_longest_refusal_ms",
        "ms",
        "longest run of consecutive failed connects: its first failure's start → the start "
        "of the next connect that worked",
    ),
    GroupFigure(
        "kill9_reset_streams",
        "",
        "long-lived connections cut by the kills (each reopened after a cut, so every kill "
        "counts every connection its agent carried), and the bulk transfer if cut",
    ),
    GroupFigure("kill9_connects", "", "new connections attempted during the kills"),
    GroupFigure(
        "kill9_restart_ms",
        "ms",
        "median of kill -9 → the restarted agent ready (the lab restarts it at once)",
    ),
    GroupFigure(
        "kill9_serving_after_start_ms",
        "ms",
        "median of the restarted agent's process start → the first new connect that worked again",
    ),
    GroupFigure(
        "kill9_plaintext_packets",
        "",
        "packets of the load's ports on the nodes' links (not tunnel traffic), kills",
    ),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)

#: The issue's goals: figure -> the value it must equal (0 for everything lost or leaked).
GOALS = {
    "upgrade_failed_connects": 0.0,
    "upgrade_reset_streams": 0.0,
    "upgrade_bulk_sha256_ok": 1.0,
    "upgrade_plaintext_packets": 0.0,
    "upgrade_agents_per_node": 1.0,
    "kill9_plaintext_packets": 0.0,
}


def load_report(log_text: str) -> dict[str, Any]:
    """The load's report: the last JSON object line of its output."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("{"):
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if isinstance(report, dict) and "connects" in report:
                return report
    tail = log_text.strip()[-400:]
    raise BenchError(f"the steady load printed no report: {tail or '(no output)'}")


def reset_streams(report: Mapping[str, Any]) -> int:
    """Long-lived connections cut, plus 1 if the bulk transfer was cut before its answer
    (a completed transfer whose hash differs is counted by the sha256 figure instead)."""
    bulk = report.get("bulk") or {}
    return int(report.get("long_cut", 0)) + int(bool(bulk.get("cut")))


_PORT = re.compile(r"\.(\d+)[: ]")


def packet_counts(lines: Iterable[str], ports: Sequence[int]) -> tuple[int, int]:
    """Of tcpdump ``-n`` lines: packets to or from one of *ports* (plain text of the load)
    and packets of the tunnel port (proof that the capture saw the mesh's traffic)."""
    wanted = {str(p) for p in ports}
    plain = tunnel = 0
    for line in lines:
        seen = set(_PORT.findall(line.split(" Flags ", 1)[0]))
        if seen & wanted:
            plain += 1
        elif str(TUNNEL_PORT) in seen:
            tunnel += 1
    return plain, tunnel


def phase_figures(
    phase: str, report: Mapping[str, Any], plaintext_packets: int
) -> dict[str, float]:
    """The figures of one phase ("upgrade" or "kill9") from the load's report."""
    figures = {
        f"{phase}_failed_connects": float(report["connects"] - report["connected"]),
        f"{phase}_reset_streams": float(reset_streams(report)),
        f"{phase}_connects": float(report["connects"]),
        f"{phase}_plaintext_packets": float(plaintext_packets),
    }
    if phase == "kill9":
        figures["kill9_longest_refusal_ms"] = float(report.get("longest_failure_ms", 0.0))
    bulk = report.get("bulk")
    if phase == "upgrade" and bulk:
        figures["upgrade_bulk_mb"] = bulk["bytes"] / 1e6
        figures["upgrade_bulk_sha256_ok"] = 1.0 if bulk.get("sha256_ok") else 0.0
    return figures


@dataclass(frozen=True)
class Kill:
    """One kill -9 and the restart after it, in wall-clock seconds."""

    node: str
    killed: float
    started: float  # the restarted agent's process began
    ready: float  # the lab saw it ready


@dataclass(frozen=True)
class Refusal:
    """What one kill cost new connects: its window of consecutive failures, if any."""

    refused_ms: float  # the window's length (0: no connect failed)
    after_kill_ms: float | None  # the kill → the window's first failure
    after_start_ms: float | None  # the new agent's process began → the first connect worked
    after_ready_ms: float | None  # the lab saw it ready → the first connect that worked


def refusals(
    kills: Sequence[Kill], windows: Sequence[Sequence[float]], slack: float = 0.5
) -> list[Refusal]:
    """Pair each kill with the failure windows that began between the kill and its
    successor's ready. A connect started up to *slack* seconds before the kill that was
    still in flight fails with it, so its window may begin a little before the kill (a
    negative ``after_kill_ms``); the kills must be spaced more than that apart."""
    found = []
    for kill in kills:
        mine = [(a, b) for a, b in windows if kill.killed - slack <= a <= kill.ready]
        if not mine:
            found.append(Refusal(0.0, None, None, None))
            continue
        start, end = mine[0][0], mine[-1][1]
        found.append(
            Refusal(
                round((end - start) * 1000, 1),
                round((start - kill.killed) * 1000, 1),
                round((end - kill.started) * 1000, 1),
                round((end - kill.ready) * 1000, 1),
            )
        )
    return found


_FAILURE = re.compile(r"^(?P<at>\d+(?:\.\d+)?) connection \d+: (?P<kind>\w+)")


def errors_by_kill(
    kills: Sequence[Kill], failures: Iterable[str], slack: float = 0.5
) -> list[dict[str, int]]:
    """What the failed connects of each kill saw, by exception name, from the load's
    ``connect_failures`` lines (``TIME connection N: Error(...)``): those from *slack*
    seconds before the kill until the next kill (at most its successor's ready + 5 s)."""
    parsed = [m for m in map(_FAILURE.match, failures) if m is not None]
    found: list[dict[str, int]] = []
    for index, kill in enumerate(kills):
        until = kill.ready + 5
        if index + 1 < len(kills):
            until = min(until, kills[index + 1].killed - slack)
        kinds: dict[str, int] = {}
        for match in parsed:
            if kill.killed - slack <= float(match["at"]) < until:
                kinds[match["kind"]] = kinds.get(match["kind"], 0) + 1
        found.append(kinds)
    return found


def process_start(start_ticks: int, hz: int, uptime: float, now: float) -> float:
    """Wall-clock seconds a process began, from field 22 of /proc/PID/stat (clock ticks
    since boot), /proc/uptime and the wall clock read together: to 1/hz s (10 ms)."""
    return now - (uptime - start_ticks / hz)


def median_ms(seconds: Sequence[float]) -> float:
    if not seconds:
        raise BenchError("no agent was restarted")
    return round(statistics.median(seconds) * 1000, 1)


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value)}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def markdown(section: Mapping[str, Any], machine_line: str, date: str) -> str:
    """The generated upgrade part of docs/benchmarks.md."""
    results: Mapping[str, float] = section.get("figures", {})
    plan: Mapping[str, Any] = section.get("plan", {})
    parts = [
        f"Run of {date} on: {machine_line}.",
        "",
        f"One lab of {plan.get('nodes', '?')} nodes; a client in pod-1 (node-1) and a server in "
        f"pod-3 (node-2): {plan.get('long', '?')} long-lived connections (a message every "
        f"{plan.get('interval', 0) * 1000:g} ms each), {plan.get('rate', '?')} new connections "
        f"a second, one bulk transfer of {plan.get('bulk_mb', '?')} MB spread over "
        f"{plan.get('bulk_seconds', '?')} s; {plan.get('rounds', '?')} upgrades of each node's "
        "agent, alternating (upgrade-agent, restart-agent), then the same load with "
        f"{plan.get('rounds', '?')} `kill -9` of each node's agent, each restarted at once "
        f"({plan.get('kill_pause', '?')} s of load after each).",
        "",
    ]

    def goal_cell(figure: GroupFigure, value: float | None) -> tuple[str, bool | None] | None:
        goal = GOALS.get(figure.name)
        if goal is None:
            return None
        return _number(goal), None if value is None else value == goal

    parts += figure_table(FIGURES, results, goal_cell, _number)
    if section.get("failed"):
        parts += ["", f"**upgrade failed:** {section['failed']}"]
    return "\n".join(parts) + "\n"
