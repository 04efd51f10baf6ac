"""`smesh check` on this machine: every check passes; a check pointed at a missing path
fails with its fix, and the exit status says so."""

from __future__ import annotations

import json
from pathlib import Path

from smesh.capture import abi, preflight
from smesh.linux import cpuidle
from tests.integration.labkit import smesh


def test_every_check_passes_here() -> None:
    proc = smesh("check", "--json")
    doc = json.loads(proc.stdout)
    assert doc["ok"] is True
    statuses = {c["name"]: c["status"] for c in doc["checks"]}
    # how idle vCPUs wake is an advisory: a warning exactly where they halt without polling
    idle = "warn" if cpuidle.idling().halts_at_once else "ok"
    assert statuses.pop("CPU idle") == idle
    assert set(statuses.values()) == {"ok"}, statuses
    for name in (
        "privileges",
        "kernel BTF",
        "cgroup v2",
        "bpffs",
        "BPF program type cgroup_sock_addr",
        "BPF program type sock_ops",
        "BPF program type cgroup_sockopt",
        "BPF map type sk_storage",
        "BPF map type ringbuf",
        "BPF helpers of sock_ops",
        "BPF object connect",
        "nftables (fallback)",
    ):
        assert name in statuses
    text = smesh("check").stdout
    marks = text.count("\n✔ ") + text.startswith("✔ ") + text.count("\n! ")
    assert marks == len(statuses) + 1  # one line per check
    assert "0 failed: this machine can run a smesh agent" in text
    if idle == "warn":
        assert "1 warning, 0 failed" in text
        assert "fix: let idle vCPUs poll before they halt" in text


def test_the_machine_hybrid_cgroup_mount_is_named() -> None:
    mounts = Path("/proc/mounts").read_text()
    cgroup = next(c for c in preflight.run() if c.name == "cgroup v2")
    if " /sys/fs/cgroup/unified cgroup2 " in mounts:
        assert cgroup.detail.startswith("mounted at /sys/fs/cgroup/unified (hybrid")


def test_a_missing_path_fails_its_check_with_the_fix(tmp_path: Path) -> None:
    checks = {c.name: c for c in preflight.run(preflight.Places(btf=tmp_path / "vmlinux"))}
    btf = checks["kernel BTF"]
    assert btf.status == "fail"
    assert btf.detail == f"{tmp_path / 'vmlinux'} is missing"
    assert btf.fix is not None
    assert "CONFIG_DEBUG_INFO_BTF" in btf.fix
    assert [c.name for c in checks.values() if c.failed] == ["kernel BTF"]

    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\ntmpfs /sys/fs/cgroup tmpfs ro 0 0\n")
    checks = {c.name: c for c in preflight.run(preflight.Places(mounts=mounts))}
    assert checks["cgroup v2"].status == "fail"
    assert "mount -t cgroup2" in str(checks["cgroup v2"].fix)
    assert checks["bpffs"].status == "warn"  # the agent mounts it itself

    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    checks = {c.name: c for c in preflight.run(preflight.Places(status=status))}
    assert checks["privileges"].status == "fail"
    assert checks["privileges"].detail == "missing CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN"
    # unprivileged, libbpf's probes say "not supported": not shown as missing features
    assert checks["BPF features and objects"].status == "fail"
    assert checks["BPF features and objects"].detail.startswith("not probed")
    assert not any(name.startswith("BPF program type") for name in checks)


def test_missing_objects_fail_the_command_with_the_fix(tmp_path: Path) -> None:
    proc = smesh("check", "--bpf-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    failed = [line for line in lines if line.startswith("✘ ")]
    assert [line.split()[3] for line in failed if "BPF object" in line] == [
        "connect",
        "peername",
        "sockops",
        "sockopt",
        "inbound",
    ]
    connect = lines.index(next(line for line in failed if "BPF object connect" in line))
    assert "fix: build them with `make bpf`" in lines[connect + 1]
    assert lines[-1].endswith("6 failed")  # the 5 objects and the helpers read from them


def test_damaged_or_unreadable_objects_fail_their_checks_without_a_traceback(
    tmp_path: Path,
) -> None:
    for stem in abi.OBJECTS:  # each cut in half, as an interrupted copy leaves it
        whole = abi.object_path(stem).read_bytes()
        (tmp_path / f"{stem}.bpf.o").write_bytes(whole[: len(whole) // 2])
    proc = smesh("check", "--bpf-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    helpers = next(line for line in proc.stdout.splitlines() if "BPF helpers" in line)
    assert "damaged ELF file" in helpers

    broken = tmp_path / "connect.bpf.o"
    broken.unlink()
    broken.mkdir()  # not a file at all: reading it fails (root reads any file)
    proc = smesh("check", "--bpf-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    helpers = next(line for line in proc.stdout.splitlines() if "BPF helpers" in line)
    assert "Is a directory" in helpers
