"""The one output flag every printing command shares."""

from __future__ import annotations

import argparse

import pytest

from smesh.cli.output import add_output, wants_json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_output(parser)
    return parser


@pytest.mark.parametrize(
    ("argv", "json_wanted"),
    [([], False), (["-o", "json"], True), (["--output=text"], False), (["--json"], True)],
)
def test_o_json_and_the_old_json_switch_ask_for_the_same(
    argv: list[str], json_wanted: bool
) -> None:
    assert wants_json(_parser().parse_args(argv)) is json_wanted


def test_an_unknown_format_is_refused_naming_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["-o", "yaml"])
    assert "choose from 'text', 'json'" in capsys.readouterr().err
