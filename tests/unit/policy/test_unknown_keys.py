"""A typo'd key in a policy file is reported as unknown, with what was meant."""

from __future__ import annotations

import pytest

from smesh.policy import PolicyError, parse
from smesh.policy.rules import UnknownPolicyKey


@pytest.mark.parametrize(
    ("text", "location", "suggestion"),
    [
        # required keys: before, these were "rules[0].name/action: required but missing"
        ("rules: [{nmae: x, action: deny}]", "rules[0].nmae", "name"),
        ("rules: [{name: x, acton: deny}]", "rules[0].acton", "action"),
        ("defualt: deny", "defualt", "default"),
        ("rules: [{name: x, action: deny, form: []}]", "rules[0].form", "from"),
        (
            "rules: [{name: x, action: deny, from: [{identty: a}]}]",
            "rules[0].from[0].identty",
            "identity",
        ),
        (
            "rules: [{name: x, action: deny, to: [{serviceAcount: db}]}]",
            "rules[0].to[0].serviceAcount",
            "serviceAccount",
        ),
    ],
)
def test_a_typo_is_an_unknown_key_with_the_closest_known_one(
    text: str, location: str, suggestion: str
) -> None:
    with pytest.raises(UnknownPolicyKey) as info:
        parse(text, "p.yaml")
    assert str(info.value) == f"p.yaml: {location}: unknown field (did you mean {suggestion!r}?)"
    assert info.value.location == location
    assert info.value.suggestion == suggestion
    assert isinstance(info.value, PolicyError)


def test_a_key_like_no_other_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPolicyKey) as info:
        parse("rules: [{name: x, action: deny, zzz: 1}]")
    assert str(info.value) == (
        "policy: rules[0].zzz: unknown field (known here: name, action, from, to, ports)"
    )
    assert info.value.suggestion is None


def test_other_errors_are_not_unknown_keys() -> None:
    with pytest.raises(PolicyError) as info:
        parse("rules: [{action: deny}]")
    assert not isinstance(info.value, UnknownPolicyKey)
    assert str(info.value) == "policy: rules[0].name: required but missing"
