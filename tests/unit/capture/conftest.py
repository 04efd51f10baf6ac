"""Unit tests of capture read the compiled BPF objects: build them first (clang, no root)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def bpf_objects() -> Path:
    """build/bpf with every object compiled from the current sources (`make bpf`)."""
    proc = subprocess.run(
        ["make", "-s", "bpf"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"make bpf failed:\n{proc.stdout}\n{proc.stderr}"
    return REPO / "build" / "bpf"
