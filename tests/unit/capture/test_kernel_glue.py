"""Pure parts of the kernel glue: where pins may go, libbpf failures as typed errors."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from smesh.capture import abi, libbpf
from smesh.capture.errors import (
    BpffsMissing,
    BpfObjectMissing,
    BpfPermissionDenied,
    BtfMissing,
    NotSupported,
    PinnedStateMismatch,
    VerifierRejected,
)
from smesh.capture.node import PodCounters, select_mode
from smesh.capture.system import _mount_of, ensure_bpffs

REPO = Path(__file__).resolve().parents[3]
MOUNTS = """\
sysfs /sys sysfs rw 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
tmpfs /run tmpfs rw 0 0
"""


def test_pins_under_a_mounted_bpffs_need_nothing() -> None:
    assert _mount_of(Path("/sys/fs/bpf/smesh/lab/node-1"), MOUNTS) == ("/sys/fs/bpf", "bpf")
    ensure_bpffs(Path("/sys/fs/bpf/smesh/lab/node-1"), MOUNTS)


def test_pins_elsewhere_than_bpffs_are_refused_with_the_way_out() -> None:
    with pytest.raises(BpffsMissing, match="not on a BPF filesystem"):
        ensure_bpffs(Path("/run/smesh/pins"), MOUNTS)


def test_a_verifier_rejection_carries_the_log() -> None:
    said = [
        "libbpf: prog 'x': BPF program load failed: Permission denied\n",
        "libbpf: prog 'x': -- BEGIN PROG LOAD LOG --\n0: (61) r2 = *(u32 *)(r1 +60)\n"
        "dereference of modified ctx ptr R2 off=60 disallowed\n-- END PROG LOAD LOG --\n",
    ]
    error = libbpf._fail("loading x.bpf.o", -errno.EACCES, said)
    assert isinstance(error, VerifierRejected)
    assert "dereference of modified ctx ptr" in str(error)
    assert error.log.startswith("0: (61)")


def test_other_failures_are_typed_by_cause() -> None:
    assert isinstance(libbpf._fail("attach", -errno.EPERM, []), BpfPermissionDenied)
    assert isinstance(libbpf._fail("load", -errno.EOPNOTSUPP, []), NotSupported)
    reuse = ["libbpf: couldn't reuse pinned map at '/sys/fs/bpf/x': parameter mismatch\n"]
    assert isinstance(libbpf._fail("load", -errno.EINVAL, reuse), PinnedStateMismatch)


def test_a_missing_object_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(BpfObjectMissing, match="make bpf"):
        libbpf.BpfObject(abi.object_path("connect", tmp_path))


def test_an_object_opens_without_privileges(bpf_objects: Path) -> None:
    """Opening parses the ELF and BTF only: the spec, the same on every machine."""
    with libbpf.BpfObject(abi.object_path("connect", bpf_objects)) as obj:
        assert obj.map(abi.MapName.CONNS).max_entries == abi.MAX_TRACKED
        obj.program(abi.CONNECT4.name)


def test_an_object_built_without_btf_is_refused_with_the_fix(
    bpf_objects: Path, tmp_path: Path
) -> None:
    obj = tmp_path / "connect.bpf.o"
    include = f"/usr/include/{os.uname().machine}-linux-gnu"
    source = REPO / "bpf" / "connect.bpf.c"
    build = ["clang", "-O2", "-target", "bpf", "-I", str(REPO / "bpf"), "-I", include]
    subprocess.run([*build, "-c", str(source), "-o", str(obj)], check=True)  # no -g
    with pytest.raises(BtfMissing, match=r"build the objects with `clang -g`"):
        libbpf.BpfObject(obj)


def test_counters_are_named_after_the_enum() -> None:
    counters = PodCounters.from_values(list(range(abi.COUNTER_COUNT)))
    assert counters.captured == abi.Counter.CAPTURED
    assert counters.events_dropped == abi.Counter.EVENTS_DROPPED


def test_an_unknown_mode_is_a_one_line_error() -> None:
    with pytest.raises(Exception, match="capture mode 'fast': use one of auto, ebpf, nftables"):
        select_mode("fast")
