"""The Python twins in smesh.capture.abi match what the compiled objects say (their BTF).

A drifted layout would not fail loudly at run time: the kernel would just read the wrong
bytes of a map value. So the test reads the objects' BTF (through bpftool, here in the
test only) and compares every struct, map and program name, and the header's constants.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from smesh.capture import abi

REPO = Path(__file__).resolve().parents[3]
TYPE_LINE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
ATTR = re.compile(r"(\w+)=([^\s,]+)")
MEMBER = re.compile(r"^\t'([^']*)' type_id=(\d+) bits_offset=(\d+)")
SECINFO = re.compile(r"^\ttype_id=(\d+) offset=(\d+) size=(\d+)")
BPF_MAP_TYPE_RINGBUF = 27


@dataclass
class BtfType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, int, int]] = field(default_factory=list)  # name, type, bits


class Btf:
    def __init__(self, obj: Path) -> None:
        out = subprocess.run(
            ["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        self.types: dict[int, BtfType] = {}
        current: BtfType | None = None
        for line in out.splitlines():
            if match := TYPE_LINE.match(line):
                current = BtfType(
                    match.group(2), match.group(3), dict(ATTR.findall(match.group(4)))
                )
                self.types[int(match.group(1))] = current
            elif (member := MEMBER.match(line)) and current is not None:
                current.members.append(
                    (member.group(1), int(member.group(2)), int(member.group(3)))
                )
            elif (sec := SECINFO.match(line)) and current is not None:
                current.members.append(("", int(sec.group(1)), int(sec.group(2)) * 8))

    def named(self, kind: str, name: str) -> BtfType | None:
        return next((t for t in self.types.values() if t.kind == kind and t.name == name), None)

    def size(self, type_id: int) -> int:
        t = self.types[type_id]
        if t.kind in ("INT", "STRUCT", "UNION", "ENUM"):
            return int(t.attrs["size"])
        if t.kind in ("TYPEDEF", "CONST", "VOLATILE"):
            return self.size(int(t.attrs["type_id"]))
        if t.kind == "ARRAY":
            return int(t.attrs["nr_elems"]) * self.size(int(t.attrs["type_id"]))
        if t.kind == "PTR":
            return 8
        raise AssertionError(f"unexpected BTF kind {t.kind}")

    def maps(self) -> dict[str, BtfType]:
        """Each map's definition struct (type/max_entries/key/value members), by name."""
        section = self.named("DATASEC", ".maps")
        assert section is not None, "no .maps section: maps must be BTF-defined"
        found = {}
        for _name, var_id, _offset in section.members:
            var = self.types[var_id]
            found[var.name] = self.types[int(var.attrs["type_id"])]
        return found

    def member_target(self, definition: BtfType, member: str) -> int:
        """The type a map definition's ``__type``/``__uint`` member points at."""
        type_id = next(t for name, t, _bits in definition.members if name == member)
        pointer = self.types[type_id]
        assert pointer.kind == "PTR"
        return int(pointer.attrs["type_id"])


@pytest.fixture(scope="module")
def btfs(bpf_objects: Path) -> dict[str, Btf]:
    return {stem: Btf(abi.object_path(stem, bpf_objects)) for stem in abi.OBJECTS}


@pytest.mark.parametrize("c_name", sorted(abi.STRUCTS))
def test_every_python_twin_has_the_layout_of_its_c_struct(
    btfs: dict[str, Btf], c_name: str
) -> None:
    twin = abi.STRUCTS[c_name]
    seen = False
    for stem, btf in btfs.items():
        struct = btf.named("STRUCT", c_name)
        if struct is None:
            continue  # not used by this object's code, so clang did not describe it
        seen = True
        assert int(struct.attrs["size"]) == ctypes.sizeof(twin), stem
        python = [
            (name, getattr(twin, name).offset, getattr(twin, name).size)
            for name, *_ in twin._fields_
        ]
        c = [(name, bits // 8, btf.size(type_id)) for name, type_id, bits in struct.members]
        assert python == c, f"{c_name} in {stem}.bpf.o"
    assert seen, f"no object describes struct {c_name}"


def test_every_map_has_the_key_and_value_sizes_python_uses(btfs: dict[str, Btf]) -> None:
    for stem, btf in btfs.items():
        maps = btf.maps()
        assert set(maps) == {name.value for name in abi.MapName}, stem
        for spec in abi.MAP_SPECS:
            definition = maps[spec.name]
            key = btf.member_target(definition, "key")
            value = btf.member_target(definition, "value")
            assert btf.size(key) == ctypes.sizeof(spec.key), f"{spec.name} key in {stem}"
            assert btf.size(value) == ctypes.sizeof(spec.value), f"{spec.name} value in {stem}"
        ring = btf.member_target(maps[abi.MapName.EVENTS], "type")
        assert int(btf.types[ring].attrs["nr_elems"]) == BPF_MAP_TYPE_RINGBUF


def test_every_program_is_in_the_object_python_loads_it_from(btfs: dict[str, Btf]) -> None:
    for spec in (*abi.POD_PROGRAMS, *abi.PROXY_PROGRAMS):
        assert btfs[spec.obj].named("FUNC", spec.name) is not None, spec
        # the kernel keeps 15 characters of a name: `bpftool prog` must show it whole
        assert len(spec.name) <= 15, spec


def header_constants() -> dict[str, int]:
    """#defines and enum values of bpf/smesh.h."""
    text = (REPO / "bpf" / "smesh.h").read_text()
    values = {
        name: int(eval(expr, {}))  # integer expressions of our own header
        for name, expr in re.findall(
            r"^#define (SMESH_\w+) ([0-9 ()*+]+?)\s*(?:/\*.*)?$", text, re.M
        )
    }
    for body in re.findall(r"enum \w+ \{(.*?)\};", text, re.S):
        nxt = 0
        for name, value in re.findall(r"(SMESH_\w+)(?: = (\d+))?,", body):
            nxt = int(value) if value else nxt
            values[name] = nxt
            nxt += 1
    return values


def test_constants_and_enums_match_the_header() -> None:
    c = header_constants()
    assert c["SMESH_MAX_PODS"] == abi.MAX_PODS
    assert c["SMESH_MAX_CIDRS"] == abi.MAX_CIDRS
    assert c["SMESH_MAX_PORTS"] == abi.MAX_PORTS
    assert c["SMESH_MAX_TRACKED"] == abi.MAX_TRACKED
    assert c["SMESH_POD_KEY_LEN"] == abi.POD_KEY_LEN
    assert c["SMESH_POD_NAME_LEN"] == abi.POD_NAME_LEN
    assert c["SMESH_F_CONFIGURED"] == abi.F_CONFIGURED
    assert c["SMESH_F_EVENTS_PASSTHROUGH"] == abi.F_EVENTS_PASSTHROUGH
    assert c["SMESH_POD_HAS_IP4"] == abi.POD_HAS_IP4
    assert c["SMESH_POD_HAS_IP6"] == abi.POD_HAS_IP6
    for decision in abi.Decision:
        assert c[f"SMESH_DECISION_{decision.name}"] == decision.value
    for counter in abi.Counter:
        assert c[f"SMESH_COUNTER_{counter.name}"] == counter.value
    assert c["SMESH_COUNTER_COUNT"] == abi.COUNTER_COUNT
