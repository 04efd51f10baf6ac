"""Labs with capture on, and the processes that play apps, servers and the agent in them."""

from __future__ import annotations

import collections.abc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.capture import lab as capture_lab
from smesh.linux import cgroups
from tests.integration.labkit import Lab, LabFactory, smesh

HERE = Path(__file__).parent
PY = sys.executable
PEER = str(HERE / "peer.py")
SERVER = str(HERE / "origdst_server.py")
RUN_IN = str(HERE / "run_in.py")
OWNER = str(HERE / "owner.py")
MODES = ("ebpf", "nftables")
EXCLUDED = 7200  # given to `capture attach --exclude-port` by the fixtures


def wait_line(proc: subprocess.Popen[str], expected: str, timeout: float = 20) -> None:
    """Wait for *proc* to print *expected* on stdout (its "I am listening" signal)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == expected:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    _out, err = proc.communicate(timeout=5)
    raise AssertionError(f"{proc.args!r} never printed {expected}: {err}")


class Harness:
    """Drive a lab: listeners in the agent's cgroup, direct servers, clients in pods."""

    def __init__(self, lab: Lab, mode: str | None) -> None:
        self.lab = lab
        self.mode = mode
        self.root = cgroups.v2_root()
        self.procs: list[subprocess.Popen[str]] = []
        self.topology = lab.status()

    def pod(self, name: str) -> dict[str, Any]:
        return next(p for p in self.topology["pods"] if p["name"] == name)

    def node_of(self, pod: str) -> str:
        return str(self.pod(pod)["node"])

    def cgroup(self, node: str, leaf: str) -> Path:
        return self.root / f"smesh-lab-{self.lab.name}" / node / leaf

    def pin_dir(self, node: str) -> Path:
        return capture_lab.pin_dir(self.lab.name, node)

    def _start(self, argv: list[str], ready: str = "READY") -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        wait_line(proc, ready)
        return proc

    def listener(self, pod: str, cgroup_leaf: str = "agent", *extra: str) -> subprocess.Popen[str]:
        """The test listener on 127.0.0.1:18000 and [::1]:18000 in *pod*'s namespace."""
        cgroup = self.cgroup(self.node_of(pod), cgroup_leaf)
        argv = [PY, SERVER, "--cgroup", str(cgroup), "--netns", self.pod(pod)["netns"], *extra]
        return self._start(argv)

    def serve(self, member: str, tag: str, port: int, udp: bool = False) -> None:
        """A real destination answering ``DIRECT tag`` on every address of *member*."""
        argv = [
            PY,
            "-m",
            "smesh",
            "lab",
            "exec",
            "--name",
            self.lab.name,
            member,
            "--",
            PY,
            PEER,
            "serve",
            tag,
            str(port),
            *(["--udp"] if udp else []),
        ]
        self._start(argv)

    def client(self, member: str, *args: str | float) -> dict[str, Any]:
        proc = self.lab.exec(member, [PY, PEER, *map(str, args)], timeout=120)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    def client_in_agent(self, pod: str, *args: str | float) -> dict[str, Any]:
        """A connect from the agent's cgroup inside *pod*'s namespace (a tunnel's dial)."""
        cgroup = self.cgroup(self.node_of(pod), "agent")
        argv = [PY, RUN_IN, str(cgroup), self.pod(pod)["netns"], "--", PY, PEER, *map(str, args)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))

    def spawn_client(self, member: str, *args: str | float) -> subprocess.Popen[str]:
        argv = [PY, "-m", "smesh", "lab", "exec", "--name", self.lab.name, member, "--"]
        proc = subprocess.Popen(
            [*argv, PY, PEER, *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        return proc

    def status(self) -> dict[str, Any]:
        return dict(json.loads(smesh("capture", "status", "--lab", self.lab.name, "--json").stdout))

    def pod_counters(self, pod: str) -> dict[str, int]:
        for node in self.status()["nodes"]:
            for entry in node["pods"]:
                if entry["name"] == pod:
                    return dict(entry)
        raise AssertionError(f"{pod} is not captured")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)
        self.procs.clear()


@pytest.fixture
def harness(lab: Lab) -> collections.abc.Iterator[Harness]:
    """A plain lab (no capture yet)."""
    h = Harness(lab, None)
    yield h
    h.stop()


@pytest.fixture(params=MODES)
def captured(
    request: pytest.FixtureRequest, lab_factory: LabFactory
) -> collections.abc.Iterator[Harness]:
    """A lab whose pods are captured (`smesh capture attach`), in each mode."""
    lab = lab_factory("--no-mesh")
    mode = str(request.param)
    smesh("capture", "attach", "--lab", lab.name, "--mode", mode, "--exclude-port", str(EXCLUDED))
    h = Harness(lab, mode)
    yield h
    h.stop()


@pytest.fixture
def ebpf_captured(lab_factory: LabFactory) -> collections.abc.Iterator[Harness]:
    lab = lab_factory("--no-mesh")
    smesh("capture", "attach", "--lab", lab.name, "--mode", "ebpf")
    h = Harness(lab, "ebpf")
    yield h
    h.stop()
