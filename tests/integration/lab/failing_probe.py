"""A test that fails on purpose once its lab's agent has logged a warning.

Not collected by the suite (no ``test_`` prefix): test_failure_report runs it in a pytest
of its own to see what a failed integration test's report shows.
"""

from __future__ import annotations

import time

from tests.integration.labkit import LabFactory


def test_fails_after_its_agent_warned(lab_factory: LabFactory) -> None:
    lab = lab_factory()
    # Plain HTTP at pod-3's tunnel port, from outside every pod: node-2's agent warns.
    lab.exec("node-1", ["curl", "-sS", "-m", "5", "http://198.18.2.2:18001/"])
    deadline = time.monotonic() + 20
    while "TLS with" not in lab.agent_trouble() and time.monotonic() < deadline:
        time.sleep(0.2)
    raise AssertionError("failing on purpose")
