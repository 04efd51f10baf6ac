"""Fixtures that build real labs (namespaces, veths, cgroups) and always tear them down."""

from __future__ import annotations

import collections.abc
from typing import Any

import pytest

from tests.integration.labkit import SMESH, Lab, LabFactory, smesh, unique_name

__all__ = ["SMESH", "Lab", "LabFactory", "smesh", "unique_name"]

#: The labs a test built with lab_factory (its funcargs hold the factory, not the labs).
MADE = pytest.StashKey[list[Lab]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> collections.abc.Generator[None, Any, None]:
    """A failed test's report shows its labs' agent warnings and errors."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    labs = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, Lab)]
    by_name = {lab.name: lab for lab in [*labs, *item.stash.get(MADE, [])]}
    for lab in by_name.values():
        try:
            trouble = lab.agent_trouble()
        except OSError as exc:
            trouble = f"cannot read the agents' logs: {exc}"
        report.sections.append((f"lab {lab.name}: agent warnings and errors", trouble))


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> collections.abc.Iterator[LabFactory]:
    """Build labs with `smesh lab up`; every one is brought down even if the test fails."""
    made: list[Lab] = []
    request.node.stash[MADE] = made

    def make(*args: str, name: str | None = None) -> Lab:
        lab = Lab(name or unique_name())
        made.append(lab)
        smesh("lab", "up", "--name", lab.name, *args)
        return lab

    yield make
    errors = []
    for lab in made:
        lab.stop_background()
        proc = smesh("lab", "down", "--name", lab.name, check=False)
        if proc.returncode != 0:
            errors.append(proc.stderr)
    assert not errors, f"lab down failed: {errors}"


@pytest.fixture
def lab(lab_factory: LabFactory) -> Lab:
    """A default lab without the mesh: 2 nodes, 2 pods each."""
    return lab_factory("--no-mesh")
