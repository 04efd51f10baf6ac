"""Failures a user meets are typed and say what failed, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smesh.capture import abi, libbpf
from smesh.capture.ebpf import EbpfCapture
from smesh.capture.errors import CgroupNotV2, VerifierRejected
from smesh.linux import cgroups
from tests.integration.capture.conftest import OWNER, PY, Harness
from tests.integration.labkit import smesh, unique_name

BAD_PROGRAM = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("cgroup/connect4")
int bad(struct bpf_sock_addr *ctx)
{
    return *(int *)((char *)ctx + 4000); /* far outside the context */
}

char LICENSE[] SEC("license") = "GPL";
"""


def test_a_program_the_verifier_refuses_raises_with_the_verifier_log(tmp_path: Path) -> None:
    source = tmp_path / "bad.bpf.c"
    source.write_text(BAD_PROGRAM)
    obj = tmp_path / "bad.bpf.o"
    include = f"/usr/include/{os.uname().machine}-linux-gnu"
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-I", include, "-c", source, "-o", obj],
        check=True,
    )
    with libbpf.BpfObject(obj) as loaded, pytest.raises(VerifierRejected) as err:
        loaded.load()
    assert "verifier rejected a program" in str(err.value)
    assert "invalid bpf_context access" in err.value.log


def test_loading_without_privileges_is_a_permission_error() -> None:
    code = (
        "from smesh.capture import abi, libbpf\n"
        "try:\n"
        "    libbpf.BpfObject(abi.object_path('connect')).load()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
        env={**os.environ, "SMESH_BPF_DIR": str(abi.objects_dir())},
    )
    assert proc.stdout.startswith("BpfPermissionDenied loading connect.bpf.o: permission denied")
    assert "run as root" in proc.stdout


def test_capture_refuses_what_is_not_a_pod_cgroup(tmp_path: Path) -> None:
    pin_dir = Path("/sys/fs/bpf") / unique_name("smesh-test-")
    with EbpfCapture(pin_dir) as capture:
        try:
            with pytest.raises(CgroupNotV2, match="is not a cgroup v2 directory"):
                capture.attach_proxy(tmp_path)
            with pytest.raises(CgroupNotV2, match="refusing to attach to the root cgroup"):
                capture.attach_proxy(cgroups.v2_root())
            with pytest.raises(CgroupNotV2, match="does not exist"):
                capture.attach_proxy(cgroups.v2_root() / unique_name("missing-"))
        finally:
            capture.detach_all()
    assert not pin_dir.exists()


def test_cli_errors_are_one_line(harness: Harness) -> None:
    name = harness.lab.name
    cases = [
        (("capture", "attach", "--lab", "nosuchlab"), "no lab named 'nosuchlab' is up"),
        (
            ("capture", "attach", "--lab", name, "--exclude-port", "70000"),
            "capture config: excluded_ports[0]: Input should be less than or equal to 65535",
        ),
        (("capture", "attach", "--lab", name, "--node", "node-9"), "has no node 'node-9'"),
    ]
    for args, message in cases:
        proc = smesh(*args, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("smesh: error: "), lines[0]
        assert message in lines[0], lines[0]


def test_one_node_is_captured_one_way_at_a_time(harness: Harness) -> None:
    name = harness.lab.name
    smesh("capture", "attach", "--lab", name, "--node", "node-1", "--mode", "ebpf")
    proc = smesh(
        "capture", "attach", "--lab", name, "--node", "node-1", "--mode", "nftables", check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"smesh: error: node-1 of lab {name!r} is captured with ebpf already; run "
        f"`smesh capture detach --lab {name} --node node-1` first"
    )


def test_auto_mode_uses_ebpf_and_says_why(harness: Harness) -> None:
    out = smesh("capture", "attach", "--lab", harness.lab.name, "--node", "node-1").stdout
    assert out.strip() == (
        "node-1: pod-1, pod-2 captured with ebpf "
        f"(auto: every BPF program loads on kernel {os.uname().release})"
    )


def test_auto_mode_falls_back_to_nftables_and_says_why(harness: Harness, tmp_path: Path) -> None:
    env = {**os.environ, "SMESH_BPF_DIR": str(tmp_path)}  # no BPF objects there
    proc = smesh("capture", "attach", "--lab", harness.lab.name, "--node", "node-2", env=env)
    assert proc.stdout.startswith("node-2: pod-3, pod-4 captured with nftables (auto: eBPF ")
    assert f"BPF object {tmp_path}/connect.bpf.o not found" in proc.stdout
    forced = smesh(
        "capture", "attach", "--lab", harness.lab.name, "--mode", "ebpf", env=env, check=False
    )
    assert forced.returncode == 1
    assert forced.stderr.startswith("smesh: error: eBPF capture is not possible here: BPF object")


def test_a_node_has_one_owner_at_a_time(harness: Harness) -> None:
    owner = harness._start([PY, OWNER, harness.lab.name, "node-1", "ebpf"])
    proc = smesh("capture", "attach", "--lab", harness.lab.name, "--node", "node-1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("smesh: error: another process (an agent?) owns the capture")
    assert owner.poll() is None
