"""Parsing of the kernel's own tables: mounts, capabilities, network devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from smesh.linux import cgroups, netns, privileges
from smesh.linux.errors import CgroupV2Missing, PermissionMissing

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
V1_ONLY = "cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"


def test_cgroup2_root_found_on_hybrid_and_unified_machines() -> None:
    assert cgroups.v2_root(HYBRID) == Path("/sys/fs/cgroup/unified")
    assert cgroups.v2_root(UNIFIED) == Path("/sys/fs/cgroup")


def test_missing_cgroup2_says_how_to_mount_it() -> None:
    with pytest.raises(CgroupV2Missing, match="mount -t cgroup2"):
        cgroups.v2_root(V1_ONLY)


def test_capabilities_are_read_from_capeff() -> None:
    status = "Name:\tx\nCapEff:\t0000000000201000\n"
    caps = privileges.effective_capabilities(status)
    assert caps & (1 << privileges.CAP_SYS_ADMIN)
    assert caps & (1 << privileges.CAP_NET_ADMIN)
    assert not caps & (1 << privileges.CAP_BPF)


def test_missing_capability_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges, "effective_capabilities", lambda: 1 << privileges.CAP_NET_ADMIN)
    with pytest.raises(PermissionMissing, match="CAP_SYS_ADMIN"):
        privileges.require("smesh lab up")


def test_interface_names_are_read_from_proc_net_dev_past_its_two_header_lines() -> None:
    text = (
        "Inter-|   Receive                            |  Transmit\n"
        " face |bytes    packets errs drop fifo frame|bytes    packets\n"
        "    lo: 307924094185 18878981    0    0    0     0 307924094185 18878981\n"
        "  eth0:1234 5 0 0 0 0 99 1\n"  # counters may follow the colon without a space
        "veth-k8s-1a2b3c:       0       0    0    0    0     0        0       0\n"
        "\n"
    )
    assert netns.interface_names(text) == ["lo", "eth0", "veth-k8s-1a2b3c"]
    assert netns.interface_names(text.splitlines(keepends=True)[0]) == []
