"""Bad input gets one line naming the problem and a non-zero exit status."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.labkit import SMESH, Lab, smesh, unique_name


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("smesh: error: ")
    return lines[0]


def test_unknown_pod_name(lab: Lab) -> None:
    proc = smesh("lab", "exec", "--name", lab.name, "pod-9", "--", "true", check=False)
    assert "pod-9" in one_line_error(proc)


def test_exec_of_a_missing_program(lab: Lab) -> None:
    proc = smesh("lab", "exec", "--name", lab.name, "pod-1", "--", "no-such-program", check=False)
    assert "no-such-program" in one_line_error(proc)
    assert proc.returncode == 127


def test_zero_nodes() -> None:
    proc = smesh("lab", "up", "--name", unique_name(), "--nodes", "0", check=False)
    assert "--nodes" in one_line_error(proc)


def test_lab_name_with_a_slash() -> None:
    proc = smesh("lab", "up", "--name", "a/b", check=False)
    assert "'a/b'" in one_line_error(proc)


def test_status_of_a_lab_that_is_not_up() -> None:
    name = unique_name()
    proc = smesh("lab", "status", "--name", name, check=False)
    assert f"no lab named {name!r}" in one_line_error(proc)


@pytest.mark.parametrize("verb", ["up", "down", "exec"])
def test_running_without_root_privileges(verb: str) -> None:
    name = unique_name()
    args = {"up": ["up"], "down": ["down"], "exec": ["exec", "pod-1", "--", "true"]}[verb]
    proc = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-all",
            *SMESH,
            "lab",
            args[0],
            "--name",
            name,
            *args[1:],
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "needs root" in one_line_error(proc)


def test_missing_cgroup_v2_mount() -> None:
    """In a private mount namespace without the cgroup2 mount (the host keeps its own)."""
    name = unique_name()
    script = (
        "awk '$3==\"cgroup2\"{print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l && "
        + " ".join(SMESH)
        + f" lab up --name {name}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "cgroup v2" in one_line_error(proc)
    smesh("lab", "down", "--name", name, check=False)
