"""`-o json` on the lab verbs that change things: their result as a document (`lab up`:
the same document `lab status -o json` gives)."""

from __future__ import annotations

import json

from tests.integration.labkit import smesh, unique_name


def test_lab_up_and_down_answer_with_json_documents() -> None:
    name = unique_name()
    try:
        up = smesh("lab", "up", "--lab", name, "--nodes", "1", "--no-mesh", "-o", "json")
        doc = json.loads(up.stdout)  # only the document: no "is up" line, no tables
        assert doc == json.loads(smesh("lab", "status", "--lab", name, "-o", "json").stdout)
        assert doc["name"] == name
        assert [n["name"] for n in doc["nodes"]] == ["node-1"]
        listed = json.loads(smesh("lab", "list", "-o", "json").stdout)
        assert name in [lab["name"] for lab in listed]
    finally:
        down = smesh("lab", "down", "--lab", name, "-o", "json", check=False)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout) == {"lab": name, "removed": True}
    again = smesh("lab", "down", "--lab", name, "-o", "json")
    assert json.loads(again.stdout) == {"lab": name, "removed": False}
