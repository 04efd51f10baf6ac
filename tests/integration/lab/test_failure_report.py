"""A failed integration test's report carries its labs' agent warnings and errors.

The lab and its logs are gone once the test's fixture brought it down, so the report is
the only place a CI failure's agent side can be read (tests/integration/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = Path(__file__).with_name("failing_probe.py")


def test_a_failed_tests_report_shows_its_agents_warnings() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(PROBE)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "failing on purpose" in proc.stdout, proc.stdout[-3000:]
    assert "agent warnings and errors" in proc.stdout, proc.stdout[-3000:]
    section = proc.stdout[proc.stdout.index("agent warnings and errors") :]
    assert "TLS with" in section, section[:3000]
