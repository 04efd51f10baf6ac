"""`smesh demo` is also a check: it exits 0 only when every expectation held."""

from __future__ import annotations

from tests.integration.labkit import smesh


def test_demo_passes_and_shows_the_plaintext_on_the_wire() -> None:
    proc = smesh("demo", timeout=120)
    assert "demo passed" in proc.stdout
    assert "Hello from pod-01" in proc.stdout
    assert "FAIL" not in proc.stdout
