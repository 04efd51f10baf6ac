"""Under CI an integration test that cannot run fails; elsewhere it skips with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANY_INTEGRATION_TEST = "tests/integration/lab/test_errors.py::test_zero_nodes"


def run_without_capabilities(ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", ANY_INTEGRATION_TEST]
    return subprocess.run(
        ["setpriv", "--inh-caps=-all", "--bounding-set=-all", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_missing_capabilities_fail_the_suite_under_ci() -> None:
    proc = run_without_capabilities("true")
    assert proc.returncode == 1, proc.stdout
    assert "integration test cannot run under CI" in proc.stdout
    assert "CAP_SYS_ADMIN" in proc.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_missing_capabilities_skip_outside_ci(ci: str | None) -> None:
    proc = run_without_capabilities(ci)
    assert proc.returncode == 0, proc.stdout
    assert "1 skipped" in proc.stdout
