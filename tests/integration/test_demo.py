"""`smesh demo` is also a check: it exits 0 only when every expectation held."""

from __future__ import annotations

import re

from tests.integration.labkit import smesh


def test_demo_passes_and_every_check_holds() -> None:
    proc = smesh("demo", timeout=120)
    assert proc.stdout.rstrip().endswith("demo passed")
    rows = [line for line in proc.stdout.splitlines() if re.match(r"^(no mesh|mesh): ", line)]
    assert len(rows) == 9
    assert all(row.rstrip().endswith("ok") for row in rows), "\n".join(rows)
    assert "'Hello from pod-01' in clear" in proc.stdout  # act 1 shows it on the wire
    assert "payload bytes, all inside" in proc.stdout  # act 2 shows only TLS records
