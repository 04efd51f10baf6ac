"""How the CPUs idle, read from a sysfs tree made for the test."""

from __future__ import annotations

from pathlib import Path

from smesh.linux import cpuidle


def _cpuidle(root: Path, states: dict[str, list[tuple[str, str]]]) -> Path:
    """A sysfs cpu tree: per CPU, its idle states' (name, usage)."""
    for cpu, entries in states.items():
        for index, (name, usage) in enumerate(entries):
            state = root / cpu / "cpuidle" / f"state{index}"
            state.mkdir(parents=True)
            (state / "name").write_text(name + "\n")
            (state / "usage").write_text(usage + "\n")
    return root


def test_halts_count_every_idle_state_but_polling(tmp_path: Path) -> None:
    root = _cpuidle(
        tmp_path,
        {
            "cpu0": [("POLL", "1000"), ("haltpoll idle", "7")],
            "cpu1": [("POLL", "5"), ("haltpoll idle", "3"), ("C6", "2")],
            "cpufreq": [],  # not a CPU
        },
    )
    assert cpuidle.halts(root) == 12
    assert cpuidle.halts(tmp_path / "missing") == 0  # no cpuidle: nothing halts


def test_a_state_that_cannot_be_read_is_left_out(tmp_path: Path) -> None:
    root = _cpuidle(tmp_path, {"cpu0": [("haltpoll idle", "7"), ("C1", "gone")]})
    assert cpuidle.halts(root) == 7


def test_how_the_cpus_idle_is_read_and_none_where_there_is_no_such_setting(
    tmp_path: Path,
) -> None:
    cpu, modules = tmp_path / "cpu", tmp_path / "module"
    assert cpuidle.idling(cpu, modules) == cpuidle.Idling(None, None)
    (cpu / "cpuidle").mkdir(parents=True)
    (cpu / "cpuidle" / "current_driver").write_text("haltpoll\n")
    (modules / "haltpoll" / "parameters").mkdir(parents=True)
    (modules / "haltpoll" / "parameters" / "guest_halt_poll_ns").write_text("0\n")
    assert cpuidle.idling(cpu, modules) == cpuidle.Idling("haltpoll", 0)
    assert cpuidle.idling(cpu, modules).halts_at_once
    assert cpuidle.idling(cpu, modules).polls_ns == 0
    (cpu / "cpuidle" / "current_driver").write_text("acpi_idle\n")
    assert cpuidle.idling(cpu, modules) == cpuidle.Idling("acpi_idle", 0)
    assert cpuidle.idling(cpu, modules).polls_ns is None
    assert not cpuidle.idling(cpu, modules).halts_at_once
