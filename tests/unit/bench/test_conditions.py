"""What else the machine did during a run: read from /proc/stat and said in the report."""

from __future__ import annotations

import pytest

from smesh.bench import conditions
from smesh.bench.errors import BenchError

STAT = """cpu  100 5 50 800 10 0 15 20 0 0
cpu0 50 2 25 400 5 0 8 10 0 0
intr 12345
"""


def test_the_cpu_line_is_read_by_column() -> None:
    ticks = conditions.cpu_ticks(STAT)
    assert ticks == {
        "user": 100, "nice": 5, "system": 50, "idle": 800,
        "iowait": 10, "irq": 0, "softirq": 15, "steal": 20,
    }  # fmt: skip


@pytest.mark.parametrize("text", ["", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n"])
def test_a_stat_without_a_whole_cpu_line_is_named(text: str) -> None:
    with pytest.raises(BenchError, match="no whole 'cpu' line in /proc/stat"):
        conditions.cpu_ticks(text)


def test_shares_are_of_the_time_between_two_readings() -> None:
    before = conditions.cpu_ticks(STAT)
    after = {**before, "user": 160, "idle": 820, "steal": 40}  # 100 ticks passed
    spent = conditions.shares(before, after)
    assert spent["user"] == pytest.approx(0.6)
    assert spent["steal"] == pytest.approx(0.2)
    assert spent["idle"] == pytest.approx(0.2)
    assert conditions.shares(before, before)["steal"] == 0.0


def test_this_machine_is_watched_over_a_run() -> None:
    found = conditions.Watch().document()
    assert set(found) == {
        "load_1m_start", "load_1m_end", "cpu_busy_share", "cpu_steal_share",
        "cpuidle_driver", "guest_halt_poll_ns",
    }  # fmt: skip
    assert 0 <= found["cpu_steal_share"] <= 1
    assert found["load_1m_start"] >= 0


def test_the_report_says_the_conditions_and_is_silent_for_older_runs() -> None:
    document = {
        "conditions": {
            "load_1m_start": 0.08,
            "load_1m_end": 3.5,
            "cpu_busy_share": 0.8712,
            "cpu_steal_share": 0.0004,
        }
    }
    assert conditions.line(document) == (
        "1-minute load average 0.08 at the start of the run and 3.50 (the bench's own load "
        "included) at its end; the CPUs were busy 87.1 % of the run and the hypervisor took "
        "0.0 % of their time (steal)."
    )
    assert conditions.line({}) == ""


def _document(driver: str | None, poll: int | None, halts: dict[str, list[float]]) -> dict:
    return {
        "conditions": {
            "load_1m_start": 0.1,
            "load_1m_end": 1.0,
            "cpu_busy_share": 0.5,
            "cpu_steal_share": 0.0,
            "cpuidle_driver": driver,
            "guest_halt_poll_ns": poll,
        },
        "notes": {name: {"halts_per_round_trip": values} for name, values in halts.items()},
    }


def test_the_report_says_how_the_vcpus_idled_and_each_variants_halts() -> None:
    document = _document("haltpoll", 0, {"direct": [2.0, 1.8, 1.9], "smesh": [2.2], "x": []})
    assert conditions.idle_line(document) == (
        "The vCPUs idle through the haltpoll cpuidle driver with guest halt polling off "
        "(guest_halt_poll_ns 0): an idle vCPU halts at once and each wake-up of one goes "
        "through the hypervisor; CPU halts per round trip of the ping-pong: direct 1.90, "
        "smesh 2.20."
    )
    assert conditions.line(document).endswith(conditions.idle_line(document))
    polling = _document("haltpoll", 200000, {})
    assert conditions.idle_line(polling) == (
        "The vCPUs idle through the haltpoll cpuidle driver and poll up to 200 µs before "
        "they halt (guest_halt_poll_ns)."
    )
    assert conditions.idle_line(_document("intel_idle", None, {})) == (
        "The CPUs idle through the intel_idle cpuidle driver."
    )
    assert conditions.idle_line(_document(None, None, {})) == "The CPUs have no cpuidle driver."
    # haltpoll's parameter is there beside other drivers too, and governs none of them
    assert conditions.idle_line(_document("acpi_idle", 0, {})) == (
        "The CPUs idle through the acpi_idle cpuidle driver."
    )


def test_runs_that_did_not_record_the_idling_say_nothing_of_it() -> None:
    older = {"conditions": {"load_1m_start": 0.1, "load_1m_end": 1.0, "cpu_busy_share": 0.5,
                            "cpu_steal_share": 0.0}}  # fmt: skip
    assert conditions.idle_line(older) == ""
    assert conditions.idle_line({}) == ""
    assert conditions.line(older).endswith("(steal).")
