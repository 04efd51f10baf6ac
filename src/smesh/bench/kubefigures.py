"""The Kubernetes figures of ``smesh bench``: percentiles, reading the agents' ADD lines, goals.

Pure functions over text and numbers, so the arithmetic behind "goal met" is unit-tested
apart from the slow measuring in :mod:`smesh.bench.kubernetes`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smesh.bench.errors import BenchError
from smesh.bench.figuretable import GroupFigure, figure_table

#: What the agent logs when it answers a CNI ADD (smesh.kubernetes.sandboxes.SandboxServer).
_ADD_LINE = re.compile(
    r"CNI ADD of (?P<pod>[^/\s]+/\S+) answered: (?P<result>meshed|not meshed) "
    r"in (?P<ms>\d+(?:\.\d+)?) ms"
)


FIGURES = (
    GroupFigure(
        "enroll_p50_ms",
        "ms",
        "CNI ADD received by the agent → answered with capture and listeners in place, "
        "median over the pods created at once",
    ),
    GroupFigure("enroll_p99_ms", "ms", "the same, 99th percentile"),
    GroupFigure(
        "first_connect_p99_ms",
        "ms",
        "POST of the Pod → first HTTP reply through the mesh from a client pod on the "
        "other node, 99th percentile",
    ),
    GroupFigure(
        "agent_rss_kib_per_pod",
        "KiB",
        "agent resident memory with N meshed idle pods on its node minus with none, / N",
    ),
    GroupFigure(
        "agent_cpu_s_per_1k_pod_events",
        "CPU s",
        "CPU of node-1's agent while pods on node-2 are created and deleted, per 1,000 "
        "pod watch events (ADDED + MODIFIED + DELETED)",
    ),
    GroupFigure(
        "agent_gc_full_pause_ms",
        "ms",
        "the event loop stopped for full (generation 2) garbage collections, both agents "
        "over the whole run (smesh_agent_gc_pause_seconds)",
    ),
    GroupFigure(
        "pod_rtt_p50_us",
        "µs",
        "64-byte request/echo round trip, client pod on node-1 to server pod on node-2 "
        "through the mesh, addressed to the pod IP, one long-lived connection, median",
    ),
    GroupFigure("pod_rtt_p99_us", "µs", "the same, 99th percentile"),
    GroupFigure(
        "svc_rtt_p50_us",
        "µs",
        "the same server addressed to a ClusterIP Service in front of it, in batches "
        "alternating with the pod IP's, median",
    ),
    GroupFigure("svc_rtt_p99_us", "µs", "the same, 99th percentile"),
    GroupFigure(
        "svc_rtt_delta_p50_us",
        "µs",
        "svc_rtt_p50_us - pod_rtt_p50_us: what resolving the ClusterIP costs a round trip",
    ),
    GroupFigure(
        "pod_connect_p50_us",
        "µs",
        "a new connection to the pod IP plus one round trip (connect → echo back), median",
    ),
    GroupFigure("svc_connect_p50_us", "µs", "the same to the ClusterIP, median"),
    GroupFigure(
        "agent_rss_kib_per_1k_endpoints",
        "KiB",
        "node-1's agent resident memory once its service table holds S Services with 10 "
        "endpoints each (smesh_service_table) minus before they existed, per 1,000 endpoints",
    ),
    GroupFigure(
        "agent_cpu_s_service_sync",
        "CPU s",
        "node-1's agent CPU from the first of the S Services' creation to its table holding "
        "them all",
    ),
    GroupFigure(
        "kube_proxy_cpu_s_service_sync",
        "CPU s",
        "node-1's kube-proxy (with the nft it runs) over the same creation, until it is quiet",
    ),
    GroupFigure(
        "agent_cpu_ms_per_endpoint_update",
        "CPU ms",
        "node-1's agent CPU while EndpointSlices are updated (one endpoint's readiness "
        "flipped each), per update",
    ),
    GroupFigure(
        "kube_proxy_cpu_ms_per_endpoint_update",
        "CPU ms",
        "node-1's kube-proxy (with its nft) over the same updates, until quiet, per update",
    ),
)
FIGURE_NAMES = tuple(f.name for f in FIGURES)

#: The generated Kubernetes section of docs/benchmarks.md lies between these.
BEGIN = "<!-- bench:kubernetes:begin -->"
END = "<!-- bench:kubernetes:end -->"
COUNTS = ("enroll", "connect", "rss", "churn")

#: The issue's goals: figure -> the bound it must not exceed.
GOALS = {"enroll_p99_ms": 100.0, "agent_rss_kib_per_pod": 256.0}


def pod_counts(text: str) -> dict[str, int]:
    """``enroll=50,connect=20`` (``--kubernetes-pods``) as {"enroll": 50, "connect": 20}."""
    counts: dict[str, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in COUNTS:
            raise BenchError(
                f"--kubernetes-pods: {item!r} is not NAME=COUNT with NAME one of "
                f"{', '.join(COUNTS)}"
            )
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count < 1 or (count > 100 and key.strip() != "churn"):
            raise BenchError(
                f"--kubernetes-pods: {item!r}: the count must be 1 to 100 (a lab node runs at "
                "most 110 pods), or 1 or more for churn"
            )
        counts[key.strip()] = count
    return counts


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value that at least *p* % of *values* do not exceed.

    No interpolation, so a p99 is always a value that was measured (of 50 samples, the
    largest: two thirds of a sample cannot be weighed).
    """
    if not values:
        raise ValueError("a percentile needs at least one value")
    if not 0 < p <= 100:
        raise ValueError(f"percentile {p} is not in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(p / 100 * len(ordered))
    return float(ordered[max(rank, 1) - 1])


@dataclass(frozen=True)
class Enrolment:
    pod: str  # namespace/name
    meshed: bool
    ms: float


def enrolments(log_text: str, namespace: str | None = None) -> list[Enrolment]:
    """Every answered CNI ADD in an agent's log (JSON lines, or text), optionally of one
    namespace; lines that are not ADD answers are skipped."""
    found = []
    for line in log_text.splitlines():
        message = line
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message = str(record.get("msg", "")) if isinstance(record, dict) else ""
        match = _ADD_LINE.search(message)
        if match is None:
            continue
        pod = match["pod"]
        if namespace is not None and not pod.startswith(f"{namespace}/"):
            continue
        found.append(Enrolment(pod, match["result"] == "meshed", float(match["ms"])))
    return found


def latest_by_pod(entries: Iterable[Enrolment]) -> dict[str, Enrolment]:
    """One enrolment per pod: the last (a retried ADD replaces the first)."""
    return {entry.pod: entry for entry in entries}


def per_thousand(cpu_seconds: float, events: int) -> float:
    if events <= 0:
        raise BenchError("no pod events were seen while the pods churned")
    return cpu_seconds / events * 1000


@dataclass(frozen=True)
class Goal:
    figure: str
    bound: float
    value: float | None

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.bound


def goals(results: Mapping[str, float]) -> list[Goal]:
    return [Goal(name, bound, results.get(name)) for name, bound in GOALS.items()]


def _number(value: float) -> str:
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}"


def markdown(section: Mapping[str, Any], machine_line: str, date: str) -> str:
    """The generated Kubernetes part of docs/benchmarks.md."""
    results: Mapping[str, float] = section.get("figures", {})
    plan: Mapping[str, Any] = section.get("plan", {})
    parts = [
        f"Run of {date} on: {machine_line}.",
        "",
        f"One lab of {plan.get('nodes', '?')} nodes; {plan.get('enroll_pods', '?')} pods "
        f"created at once for enrolment, {plan.get('connect_pods', '?')} pods one after "
        f"another for the first connect, {plan.get('rss_pods', '?')} idle pods on node-1 "
        f"for memory, {plan.get('churn_rounds', 1)} x {plan.get('churn_pods', '?')} pods created "
        "and deleted on node-2 for CPU; "
        f"{plan.get('rtt_batches', '?')} alternating batches of {plan.get('rtt_rounds', '?')} "
        f"round trips and {plan.get('rtt_connects', '?')} connects per address for the "
        f"Service round trip; S = {plan.get('scale_services', '?')} selector-less Services "
        f"of {plan.get('scale_endpoints', '?')} endpoints and "
        f"{plan.get('scale_updates', '?')} EndpointSlice updates for the service table.",
        "",
    ]
    bounds = {g.figure: g for g in goals(results)}

    def goal_cell(figure: GroupFigure, value: float | None) -> tuple[str, bool | None] | None:
        goal = bounds.get(figure.name)
        return None if goal is None else (f"≤ {goal.bound:g} {figure.unit}", goal.met)

    parts += figure_table(FIGURES, results, goal_cell, _number)
    if section.get("failed"):
        parts += ["", f"**kubernetes failed:** {section['failed']}"]
    return "\n".join(parts) + "\n"


def round_trips(samples: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, float]:
    """The Service round-trip figures from the client's samples (µs, by "pod" and "svc")."""
    out: dict[str, float] = {}
    for key in ("pod", "svc"):
        rtt = samples[key]["rtt_us"]
        connect = samples[key]["connect_us"]
        if not rtt or not connect:
            raise BenchError(f"the round-trip client measured nothing for {key}")
        out[f"{key}_rtt_p50_us"] = percentile(rtt, 50)
        out[f"{key}_rtt_p99_us"] = percentile(rtt, 99)
        out[f"{key}_connect_p50_us"] = percentile(connect, 50)
    out["svc_rtt_delta_p50_us"] = out["svc_rtt_p50_us"] - out["pod_rtt_p50_us"]
    return out


def gc_full_pause_seconds(metrics_text: str) -> float:
    """The agent's total time in generation 2 collections, from its /metrics text."""
    prefix = 'smesh_agent_gc_pause_seconds_sum{generation="2"} '
    for line in metrics_text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0
