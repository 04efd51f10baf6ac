"""`smesh ca` as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smesh.cli import main


def test_init_inspect_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = str(tmp_path / "ca")
    assert main(["ca", "init", "--dir", ca, "--trust-domain", "example.org"]) == 0
    assert main(["ca", "init", "--dir", ca]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["ca", "rotate", "--dir", ca]) == 0
    assert main(["ca", "rotate", "--activate", "--dir", ca]) == 0
    capsys.readouterr()
    assert main(["ca", "inspect", "--json", "--dir", ca]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trust_domain"] == "example.org"
    assert [r["state"] for r in doc["roots"]] == ["trusted", "active"]
    assert main(["ca", "rotate", "--retire-old", "--dir", ca]) == 0
    assert main(["ca", "inspect", "--dir", ca]) == 0
    assert "retired" in capsys.readouterr().out


def test_inspect_without_a_ca_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ca", "inspect", "--dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("smesh: error: no CA in")
    assert "\n" not in err
