"""Policy files: errors name the field; a bad reload keeps the previous policy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from smesh.policy import PolicyError, PolicyStore, parse


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [{name: x, action: maybe}]", "rules[0].action: "),
        ("rules: [{action: deny}]", "rules[0].name: required but missing"),
        ("rules: [{name: x, action: deny, form: []}]", "rules[0].form: unknown field"),
        (
            "rules: [{name: x, action: deny, from: [{namespace: 7}]}]",
            "rules[0].from[0].namespace: ",
        ),
        (
            "rules: [{name: x, action: deny, from: [{}]}]",
            "give one of identity, namespace or trustDomain",
        ),
        (
            "rules: [{name: x, action: deny, from: [{identity: 'spiffe://td/ns/a'}]}]",
            "rules[0].from[0].identity: ",
        ),
        ("rules: [{name: x, action: deny, to: [{}]}]", "rules[0].to[0]: give at least one"),
        ("rules: [{name: x, action: deny, ports: [80, 70000]}]", "rules[0].ports: item 1: 70000"),
        ("rules: [{name: x, action: deny, ports: ['90-80']}]", "rules[0].ports: item 0: '90-80'"),
        ("rules: [{name: x, action: deny}, {name: x, action: allow}]", "two rules are named 'x'"),
        ("default: maybe", "default: "),
        ("rules: [", "not valid YAML at line"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse(text, "policy.yaml")
    assert str(info.value).startswith("policy.yaml: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_reload_keeps_the_old_policy_when_the_new_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: [{name: a, action: deny}]\n")
    store = PolicyStore(path)
    path.write_text("rules: [{name: a, action: nope}]\n")
    assert store.reload() is False
    assert store.policy.rules[0].name == "a"
    assert store.error is not None
    assert "rules[0].action" in store.error
    path.write_text("rules: [{name: b, action: allow}]\n")
    assert store.reload() is True
    assert store.policy.rules[0].name == "b"
    assert store.error is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.write_bytes(b"rules: [{name: \xff}]\n"), "not UTF-8 text"),
        (lambda path: path.mkdir(), "cannot read it: Is a directory"),
    ],
)
def test_a_reload_of_an_unreadable_file_keeps_the_old_policy_and_says_why(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: [{name: a, action: deny}]\n")
    store = PolicyStore(path)
    path.unlink()
    make(path)
    assert store.reload() is False
    assert store.policy.rules[0].name == "a"
    assert store.error is not None
    assert message in store.error


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file"):
        PolicyStore(tmp_path / "missing.yaml")


def test_policy_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smesh.cli import main  # noqa: PLC0415

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("rules: [{name: a, action: deny, to: [{pod: pod-3}]}]\n")
    bad.write_text("rules: [{name: a, action: deny, ports: [0]}]\n")
    assert main(["policy", "check", str(good)]) == 0
    assert "valid — 1 rules (0 allow, 1 deny), default allow" in capsys.readouterr().out
    assert main(["policy", "check", str(bad)]) == 2
    assert "rules[0].ports: item 0" in capsys.readouterr().err
