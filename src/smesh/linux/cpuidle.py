"""How this machine's CPUs idle, from sysfs: the cpuidle driver, guest halt polling, halts.

A virtual machine whose idle vCPUs halt at once (the ``haltpoll`` cpuidle driver with
``guest_halt_poll_ns`` 0) pays a trip through the hypervisor each time an idle vCPU is
woken. A request and its answer through a node proxy wake idle vCPUs about twice, and on
such a machine those wake-ups are most of a pod-to-pod round trip, for smesh and the C
tunnels alike (docs/benchmarks.md, "The virtual CPUs' idle halts"). ``smesh check`` warns
of it and ``smesh bench`` records it, both from these readings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPU_SYSFS = Path("/sys/devices/system/cpu")
MODULE_SYSFS = Path("/sys/module")
#: The haltpoll governor's default guest_halt_poll_ns (drivers/cpuidle/governors/haltpoll.c).
DEFAULT_POLL_NS = 200_000


@dataclass(frozen=True)
class Idling:
    """The cpuidle driver (None without cpuidle) and, under ``haltpoll``, the longest a
    vCPU polls before it halts (None where the machine has no such setting)."""

    driver: str | None
    guest_halt_poll_ns: int | None

    @property
    def polls_ns(self) -> int | None:
        """How long an idle vCPU polls before it halts; None unless the driver is
        ``haltpoll`` (the module's parameter exists beside other drivers, and governs none)."""
        return self.guest_halt_poll_ns if self.driver == "haltpoll" else None

    @property
    def halts_at_once(self) -> bool:
        """An idle vCPU halts without polling first: every wake-up is the hypervisor's."""
        return self.polls_ns == 0


def idling(cpu_root: Path = CPU_SYSFS, module_root: Path = MODULE_SYSFS) -> Idling:
    return Idling(
        driver=_read(cpu_root / "cpuidle" / "current_driver"),
        guest_halt_poll_ns=_number(
            _read(module_root / "haltpoll" / "parameters" / "guest_halt_poll_ns")
        ),
    )


def halts(cpu_root: Path = CPU_SYSFS) -> int:
    """How many times the CPUs have entered an idle state that stops them so far: every
    cpuidle state but polling (0 on a machine without cpuidle)."""
    total = 0
    for state in cpu_root.glob("cpu[0-9]*/cpuidle/state[0-9]*"):
        try:
            if (state / "name").read_text().strip() == "POLL":
                continue
            total += int((state / "usage").read_text())
        except (OSError, ValueError):  # a CPU going offline meanwhile
            continue
    return total


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _number(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
