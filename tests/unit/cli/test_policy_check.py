"""`smesh policy check FILE -o json`: one document whether the file is valid or not."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.cli.conftest import SmeshCli


def test_a_valid_policy_is_its_rule_counts(tmp_path: Path, smesh_cli: SmeshCli) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "default: deny\nrules:\n"
        "  - {name: a, action: allow, from: [{namespace: web}]}\n"
        "  - {name: b, action: deny, from: [{namespace: batch}]}\n"
    )
    proc = smesh_cli("policy", "check", str(path), "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "file": str(path),
        "valid": True,
        "rules": 2,
        "allow": 1,
        "deny": 1,
        "default": "deny",
    }
    assert smesh_cli("policy", "check", str(path)).stdout.startswith(
        f"{path}: valid — 2 rules (1 allow, 1 deny)"
    )


def test_an_invalid_policy_is_a_document_with_the_error_and_exit_2(
    tmp_path: Path, smesh_cli: SmeshCli
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - {name: a, acton: allow}\n")
    proc = smesh_cli("policy", "check", "-o", "json", str(path))
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    assert doc["valid"] is False
    assert doc["file"] == str(path)
    assert "acton" in doc["error"]
    assert proc.stderr == f"smesh: error: {doc['error']}\n"  # the same one line as text
    text = smesh_cli("policy", "check", str(path))
    assert (text.returncode, text.stdout) == (2, "")
    assert text.stderr == proc.stderr
