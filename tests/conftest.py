"""Shared test configuration.

Tests under tests/integration need root, network namespaces, cgroup v2 and BPF. Where
those are missing they skip on a developer machine, but under CI (``CI=true``) they fail:
an integration suite that silently does not run is a broken feature hidden.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

import pytest

from smesh.linux import cgroups, privileges
from smesh.linux.errors import LinuxError

INTEGRATION_DIR = Path(__file__).parent / "integration"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """A run ended by SIGTERM (``timeout``, a CI job cancelled) stops as on Ctrl-C, so pytest
    still runs the fixtures' finalizers: labs come down instead of leaving namespaces,
    cgroups, pins and control-plane processes behind.

    And Ctrl-C reaches the commands the tests start: a run started in the background of a
    shell without job control (``make test &`` in a script) has SIGINT ignored, which its
    children would inherit, so the tests that stop a command with Ctrl-C, as its user would
    (``flows --follow``), would wait for it in vain. A handled signal is the default again
    in a child (exec resets it); an ignored one stays ignored.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


def missing_capabilities() -> list[str]:
    """What this machine or process lacks for the integration suite."""
    missing = []
    try:
        privileges.require(
            "the integration tests", (privileges.CAP_SYS_ADMIN, privileges.CAP_NET_ADMIN)
        )
    except LinuxError as exc:
        missing.append(str(exc))
    try:
        cgroups.v2_root()
    except LinuxError as exc:
        missing.append(str(exc))
    if not Path("/sys/fs/bpf").is_dir() or not Path("/sys/kernel/btf/vmlinux").exists():
        missing.append("no BPF filesystem directory or kernel BTF (/sys/kernel/btf/vmlinux)")
    return missing


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(autouse=True)
def _integration_capabilities(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("integration") is None:
        return
    missing = missing_capabilities()
    if not missing:
        return
    reason = "; ".join(missing)
    if in_ci():
        pytest.fail(f"integration test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)
