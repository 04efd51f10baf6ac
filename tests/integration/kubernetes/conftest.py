"""A real etcd + kube-apiserver on 127.0.0.1, shared by this package's tests.

One control plane per test module (starting one costs about 3 s of two busy cores); each test
works in its own namespace and node name, so tests do not see each other's pods. Under
``CI=true`` a control plane that cannot start (binaries not built) fails the test; elsewhere
it skips with the command that builds them.
"""

from __future__ import annotations

import collections.abc

import pytest

from smesh.lab.controlplane import ControlPlane, MissingBinaries
from tests.conftest import in_ci


@pytest.fixture(scope="module")
def control_plane() -> collections.abc.Iterator[ControlPlane]:
    """Started once per module; stopped (by pid) and its data removed even if a test fails."""
    plane = ControlPlane()
    try:
        plane.start()
    except MissingBinaries as exc:
        if in_ci():
            pytest.fail(f"integration test cannot run under CI: {exc}", pytrace=False)
        pytest.skip(str(exc))
    try:
        yield plane
    finally:
        plane.stop()
