from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.dataplane.harness import Mesh


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    yield m
    m.close()
