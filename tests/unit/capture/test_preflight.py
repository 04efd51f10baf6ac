"""`smesh check`'s lists of BPF features stay those of bpf/*.c and the compiled objects."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smesh.capture import abi, preflight

BPF = Path(__file__).resolve().parents[3] / "bpf"


def sources() -> str:
    return "".join(p.read_text() for p in sorted(BPF.glob("*.[ch]")))


def test_the_map_types_are_those_of_the_sources() -> None:
    used = {m.lower() for m in re.findall(r"BPF_MAP_TYPE_(\w+)", sources())}
    assert used == set(preflight.MAP_TYPES)


def test_every_program_section_has_a_program_type() -> None:
    sections = set(re.findall(r'SEC\("([^"]+)"\)', sources())) - {"license", ".maps"}
    assert sections
    for section in sections:
        assert any(section.startswith(p) for p, _ in preflight.SECTION_TYPES), section


def test_the_helpers_read_from_the_objects_are_those_the_sources_call() -> None:
    if not all(abi.object_path(stem).exists() for stem in abi.OBJECTS):
        pytest.fail("the BPF objects are not built: run `make bpf`")
    used = preflight.helpers_used(abi.objects_dir())
    assert set(used) == set(preflight.PROG_TYPES)
    found = set().union(*used.values())
    called = set(re.findall(r"\bbpf_(\w+)\(", sources())) - {"htonl", "htons", "ntohl", "ntohs"}
    assert {preflight.HELPER_NAMES[h] for h in found} == called


def test_an_object_that_is_not_elf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.bpf.o"
    path.write_bytes(b"not an object")
    with pytest.raises(preflight.ObjectUnreadable, match="not a 64-bit little-endian ELF"):
        preflight.program_helpers(path)


@pytest.mark.parametrize("keep", [4, 0x40, 0.5])
def test_an_object_cut_short_is_refused_as_damaged(tmp_path: Path, keep: float) -> None:
    whole = abi.object_path("connect").read_bytes()
    path = tmp_path / "connect.bpf.o"
    path.write_bytes(whole[: int(keep * len(whole)) if keep < 1 else int(keep)])
    with pytest.raises(preflight.ObjectUnreadable, match="ELF file"):
        preflight.program_helpers(path)


def _idle_places(tmp_path: Path, driver: str | None, poll_ns: str | None) -> preflight.Places:
    cpus, modules = tmp_path / "cpu", tmp_path / "module"
    if driver is not None:
        (cpus / "cpuidle").mkdir(parents=True)
        (cpus / "cpuidle" / "current_driver").write_text(driver + "\n")
    if poll_ns is not None:
        (modules / "haltpoll" / "parameters").mkdir(parents=True)
        (modules / "haltpoll" / "parameters" / "guest_halt_poll_ns").write_text(poll_ns + "\n")
    return preflight.Places(cpus=cpus, modules=modules)


def test_vcpus_that_halt_without_polling_are_a_warning_with_the_setting_to_change(
    tmp_path: Path,
) -> None:
    places = _idle_places(tmp_path, "haltpoll", "0")
    check = preflight.cpu_idle(places)
    assert check.status == "warn"
    assert not check.failed  # the agent runs; its round trips are slow, and so are everyone's
    assert "guest halt polling off" in check.detail
    assert check.fix is not None
    parameter = places.modules / "haltpoll" / "parameters" / "guest_halt_poll_ns"
    assert f"write 200000 (the driver's default, in ns) to {parameter}" in check.fix
    assert "haltpoll.guest_halt_poll_ns=200000" in check.fix


@pytest.mark.parametrize(
    ("driver", "poll_ns", "detail"),
    [
        (
            "haltpoll",
            "200000",
            "haltpoll cpuidle driver; an idle vCPU polls up to 200 µs before it halts",
        ),
        (
            "haltpoll",
            "50000",
            "haltpoll cpuidle driver; an idle vCPU polls up to 50 µs before it halts",
        ),
        ("intel_idle", None, "intel_idle cpuidle driver"),
        ("acpi_idle", "0", "acpi_idle cpuidle driver"),  # the parameter governs haltpoll only
        (None, None, "no cpuidle driver"),
    ],
)
def test_cpus_that_poll_or_idle_otherwise_pass(
    tmp_path: Path, driver: str | None, poll_ns: str | None, detail: str
) -> None:
    check = preflight.cpu_idle(_idle_places(tmp_path, driver, poll_ns))
    assert (check.status, check.detail, check.fix) == ("ok", detail, None)
