"""Meshed labs with apps in their pods: the apps know nothing of smesh."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.labkit import Lab, LabFactory

APP = str(Path(__file__).with_name("app.py"))


class Apps:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def serve(self, pod: str, *args: object) -> subprocess.Popen[str]:
        """Start a server app in *pod* and wait until it listens."""
        proc = self.lab.spawn(
            pod, [sys.executable, APP, *map(str, args)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "READY", f"server app in {pod} did not start: {line!r}"
        return proc

    def run(self, pod: str, *args: object, timeout: float = 180) -> dict[str, Any]:
        """Run a client app in *pod* and return its JSON report."""
        proc = self.lab.exec(pod, [sys.executable, APP, *map(str, args)], timeout=timeout)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    @staticmethod
    def report(server: subprocess.Popen[str]) -> dict[str, Any]:
        """The next per-connection report of a server app."""
        assert server.stdout is not None
        return json.loads(server.stdout.readline())


@pytest.fixture
def meshed(lab_factory: LabFactory) -> Lab:
    """A lab with smesh on: a CA, a signing service and one agent per node."""
    return lab_factory()


@pytest.fixture
def apps(meshed: Lab) -> Apps:
    return Apps(meshed)
