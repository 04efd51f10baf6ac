from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smesh.dataplane.loop import LOOP_KINDS
from tests.unit.dataplane.harness import Mesh


@pytest.fixture(params=LOOP_KINDS)
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """Both event loops the agent can run on (uvloop is the default)."""
    m = Mesh(tmp_path, loop=request.param)
    yield m
    m.close()
