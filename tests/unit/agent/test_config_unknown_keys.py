"""A typo'd key in the agent configuration is reported as unknown, with what was meant."""

from __future__ import annotations

from pathlib import Path

import pytest

from smesh.agent.config import ConfigError, UnknownConfigKey, load


@pytest.mark.parametrize(
    ("text", "location", "suggestion"),
    [
        # `node` is required: before, the error was "node: required but missing"
        ("nod: n\nworkloads: /w\n", "nod", "node"),
        ("node: n\nworkloads: /w\nadmin: {prot: 1}\n", "admin.prot", "port"),
        ("node: n\nworkloads: /w\ncapture: {pindir: /p}\n", "capture.pindir", "pinDir"),
        (
            "node: n\nworkloads: /w\nidentity: {trustdomain: x}\n",
            "identity.trustdomain",
            "trustDomain",
        ),
    ],
)
def test_a_typo_is_an_unknown_key_with_the_closest_known_one(
    tmp_path: Path, text: str, location: str, suggestion: str
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(UnknownConfigKey) as info:
        load(path, environ={})
    assert str(info.value) == (f"{path}: {location}: unknown field (did you mean {suggestion!r}?)")
    assert info.value.key == location.rpartition(".")[2]
    assert info.value.location == location
    assert info.value.suggestion == suggestion
    assert isinstance(info.value, ConfigError)  # callers that catch ConfigError still do


def test_a_key_like_no_other_lists_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node: n\nworkloads: /w\nadmin: {zzz: 1}\n")
    with pytest.raises(UnknownConfigKey, match=r"admin\.zzz: unknown field \(known here: ") as info:
        load(path, environ={})
    assert "port" in str(info.value)
    assert info.value.suggestion is None


def test_an_override_with_a_typo_suggests_the_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("node: n\nworkloads: /w\n")
    with pytest.raises(ConfigError, match=r"unknown field 'admin\.prot' \(did you mean 'port'\?\)"):
        load(path, ["admin.prot=1"], environ={})
