"""`smesh status`'s policy lines, and `smesh lab policy` refusing a bad file first."""

from __future__ import annotations

from pathlib import Path

import pytest

from smesh.cli.policy import policy_lines
from smesh.lab import policy as lab_policy
from smesh.policy import PolicyError

HELD = {
    "name": "/run/smesh/labs/x/policy.yaml",
    "digest": "sha256:" + "ab" * 32,
    "rules": 3,
    "default": "allow",
    "loaded_at": 1796300320.75,
    "pending": None,
    "error": None,
    "last_refused": None,
}


def test_the_policy_in_force_is_one_line() -> None:
    assert policy_lines("node-1", HELD) == [
        "node-1: /run/smesh/labs/x/policy.yaml sha256:abababababab, 3 rules, default allow, "
        "loaded 2026-12-03 12:18:40Z"
    ]


def test_a_refused_reload_follows_with_its_time_and_whether_it_still_stands() -> None:
    refused = {"at": 1796300324.8, "error": "policy.yaml: rules[0].action: ..."}
    standing = policy_lines("node-2", {**HELD, "error": refused["error"], "last_refused": refused})
    assert standing[1] == (
        "        last refused reload 2026-12-03 12:18:44Z: policy.yaml: rules[0].action: ... "
        "(the policy above stays in force)"
    )
    later = policy_lines("node-2", {**HELD, "last_refused": refused})
    assert later[1].endswith("(a later reload succeeded)")


def test_a_pending_agent_says_it_refuses_everything() -> None:
    [line] = policy_lines("node-1", {**HELD, "pending": "objects not read yet"})
    assert line == ("node-1: PENDING (objects not read yet): every inbound connection is refused")


def test_lab_policy_refuses_a_bad_file_before_it_looks_at_the_lab(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [{name: a, acton: deny}]\n")
    with pytest.raises(PolicyError, match=r"rules\[0\]\.acton: unknown field"):
        lab_policy.install("no-such-lab-anywhere", bad)
