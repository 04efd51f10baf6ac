"""What else the machine was doing during a run: its load, and the hypervisor's share.

Figures of one run compare with each other, but a reader weighing runs of different days
needs to know whether a run had the machine to itself ("a quiet machine") and whether the
virtual CPUs were really there: time a hypervisor gives to other guests shows as *steal*
in /proc/stat, and every variant of the run loses it alike only if it is spread evenly.
The run records both, so such claims in docs/benchmarks.md are read from the results.

It also records how the virtual CPUs idle (:mod:`smesh.linux.cpuidle`): where idle vCPUs
halt without polling, as on the machine of 12-04, two wake-ups through the hypervisor are
most of every round trip, so round trips of two machines do not compare unless both say
how they idle.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from smesh.bench.errors import BenchError
from smesh.linux import cpuidle

PROC_STAT = Path("/proc/stat")
#: The columns of /proc/stat's ``cpu`` line (proc(5)); guest time is inside user already.
CPU_COLUMNS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def cpu_ticks(stat: str) -> dict[str, int]:
    """The machine's CPU time so far by column, in clock ticks, from /proc/stat's text."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            try:
                return dict(zip(CPU_COLUMNS, map(int, fields[1:9]), strict=True))
            except ValueError:
                break
    raise BenchError(f"no whole 'cpu' line in /proc/stat: {stat[:120]!r}")


def shares(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, float]:
    """Each column's share of all CPU time between two readings (0 where none passed)."""
    spent = {name: after[name] - before[name] for name in CPU_COLUMNS}
    total = sum(spent.values())
    return {name: (value / total if total > 0 else 0.0) for name, value in spent.items()}


class Watch:
    """Readings at the start of a run; :meth:`document` adds the end's."""

    def __init__(self) -> None:
        self.load_start = os.getloadavg()[0]
        self.start = cpu_ticks(PROC_STAT.read_text())
        self.idling = cpuidle.idling()

    def document(self) -> dict[str, Any]:
        end = cpu_ticks(PROC_STAT.read_text())
        spent = shares(self.start, end)
        return {
            "load_1m_start": round(self.load_start, 2),
            "load_1m_end": round(os.getloadavg()[0], 2),
            "cpu_busy_share": round(1 - spent["idle"] - spent["iowait"] - spent["steal"], 4),
            "cpu_steal_share": round(spent["steal"], 4),
            "cpuidle_driver": self.idling.driver,
            "guest_halt_poll_ns": self.idling.guest_halt_poll_ns,
        }


def line(document: Mapping[str, Any]) -> str:
    """The report's sentences on the run's conditions; empty for runs that did not record
    them (before 12-04)."""
    found = document.get("conditions")
    if not found:
        return ""
    said = (
        f"1-minute load average {found['load_1m_start']:.2f} at the start of the run and "
        f"{found['load_1m_end']:.2f} (the bench's own load included) at its end; the "
        f"CPUs were busy {_percent(found['cpu_busy_share'])} of the run and the hypervisor "
        f"took {_percent(found['cpu_steal_share'])} of their time (steal)."
    )
    return " ".join(filter(None, (said, idle_line(document))))


def idle_line(document: Mapping[str, Any]) -> str:
    """How the vCPUs idled, and how often the round-trip test halted one per round trip
    (by variant); empty for runs that did not record it (before 12-04 evening)."""
    found = document.get("conditions", {})
    if "cpuidle_driver" not in found:
        return ""
    idle = cpuidle.Idling(found["cpuidle_driver"], found.get("guest_halt_poll_ns"))
    if idle.driver is None:
        said = "The CPUs have no cpuidle driver"
    elif idle.halts_at_once:
        said = (
            f"The vCPUs idle through the {idle.driver} cpuidle driver with guest halt polling "
            "off (guest_halt_poll_ns 0): an idle vCPU halts at once and each wake-up of one "
            "goes through the hypervisor"
        )
    elif idle.polls_ns is not None:
        said = (
            f"The vCPUs idle through the {idle.driver} cpuidle driver and poll up to "
            f"{idle.polls_ns / 1000:g} µs before they halt (guest_halt_poll_ns)"
        )
    else:
        said = f"The CPUs idle through the {idle.driver} cpuidle driver"
    per_variant = {
        name: statistics.median(values)
        for name, notes in document.get("notes", {}).items()
        if (values := notes.get("halts_per_round_trip"))
    }
    if not per_variant:
        return said + "."
    each = ", ".join(f"{name} {value:.2f}" for name, value in per_variant.items())
    return f"{said}; CPU halts per round trip of the ping-pong: {each}."


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %"
