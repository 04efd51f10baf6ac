"""The lab agents' CPU weight reaches the scheduler: their session's autogroup gets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smesh.lab import agents


def test_the_autogroup_nice_is_written_where_the_kernel_reads_it(tmp_path: Path) -> None:
    target = tmp_path / "autogroup"
    assert agents.set_autogroup_nice(-5, target)
    assert target.read_text() == "-5\n"


def test_a_kernel_without_autogroups_is_no_error(tmp_path: Path) -> None:
    assert not agents.set_autogroup_nice(-5, tmp_path / "missing" / "autogroup")


@pytest.mark.skipif(
    not agents.AUTOGROUP.exists() or os.geteuid() != 0,
    reason="needs autogroups and the right to raise priority (root)",
)
def test_a_new_session_at_agent_nice_weighs_as_its_nice(tmp_path: Path) -> None:
    """What spawn does for an agent: setsid, then the nice value and the autogroup's."""
    code = (
        "import os; from smesh.lab import agents; "
        "agents.set_weight(agents.AGENT_NICE); "
        "print(os.getpriority(os.PRIO_PROCESS, 0), open('/proc/self/autogroup').read().strip())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
        timeout=30,
    ).stdout.strip()
    assert out.startswith(f"{agents.AGENT_NICE} ")
    assert out.endswith(f"nice {agents.AGENT_NICE}")
