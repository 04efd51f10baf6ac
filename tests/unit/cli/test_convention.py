"""One CLI convention: `-o json` on every command that prints, `--lab` (and $SMESH_LAB)
wherever a lab is named, `-v` before or after the command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from smesh.cli import COMMANDS, build_parser
from smesh.cli.output import wants_json

#: Commands that print no result of their own, each with the reason. Every other command
#: must take -o/--output: a new command fails this test until it does or is named here.
NOT_PRINTING = {
    "agent": "a daemon: it logs",
    "controller": "a daemon: it logs",
    "ca serve": "a daemon: it logs",
    "ca init": "one line of advice",
    "ca rotate": "one line of advice: the next step of the rotation",
    "cni install": "the init container's one line",
    "cni uninstall": "the preStop hook's one line",
    "demo": "a narrated story",
    "bench": "a report; its results document goes to --results FILE",
    "completion": "a shell script",
    "lab exec": "what the command run in the pod writes",
    "lab kubectl": "what kubectl writes (kubectl's own -o json)",
    "lab logs": "the agent's log lines, JSON already",
}

#: Every command that names a lab: its words, and the arguments it needs besides (the lab
#: flag goes between: `lab exec` takes options after POD only up to its `--`).
LAB_COMMANDS = [
    ("status", ""),
    ("trace", ""),
    ("capture attach", ""),
    ("capture detach", ""),
    ("capture status", ""),
    ("lab up", ""),
    ("lab down", ""),
    ("lab status", ""),
    ("lab restart-agent", "node-1"),
    ("lab upgrade-agent", "node-1"),
    ("lab stop-agent", "node-1"),
    ("lab restart-kubelet", "node-1"),
    ("lab restart-control-plane", "etcd"),
    ("lab exec", "pod-1"),
    ("lab kubectl", ""),
    ("lab logs", "node-1"),
]


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable (sub)command of *parser*, as (its words, its parser)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaves(sub, (*path, name))


def required_positionals(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for a command's positional arguments and required options."""
    values = []
    for action in parser._actions:
        placeholder = next(iter(action.choices)) if action.choices else "x"
        if action.option_strings:
            if action.required:  # e.g. `policy explain --from ID --to POD:PORT`
                values += [action.option_strings[0], placeholder]
            continue
        if action.nargs in ("?", "*", argparse.REMAINDER):
            continue
        values.append(placeholder)
    return values


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(argv).parse_args(argv)


def test_every_command_that_prints_takes_o_json() -> None:
    found = {" ".join(path): sub for path, sub in leaves(build_parser(every=True))}
    assert set(NOT_PRINTING) <= set(found), set(NOT_PRINTING) - set(found)
    printing = {name: sub for name, sub in found.items() if name not in NOT_PRINTING}
    assert {"status", "check", "trace", "policy check", "lab up", "lab list"} <= set(printing)
    for name, sub in printing.items():
        argv = [*name.split(), *required_positionals(sub)]
        assert wants_json(parse([*argv, "-o", "json"])), name
        assert wants_json(parse([*argv, "--output=json"])), name
        assert wants_json(parse([*argv, "--json"])), name  # the old switch: a hidden alias
        assert not wants_json(parse(argv)), name


def test_the_commands_that_print_nothing_of_their_own_take_no_o() -> None:
    """So the exclusion list above cannot hide a command that gained -o."""
    for path, sub in leaves(build_parser(every=True)):
        name = " ".join(path)
        if name in NOT_PRINTING and name != "bench":
            assert "--output" not in sub._option_string_actions, name


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "status"],
        ["status", "-v"],
        ["status", "--lab", "x", "--verbose"],
        ["-v", "lab", "status"],
        ["lab", "-v", "status"],
        ["lab", "status", "-v"],
        ["capture", "status", "-v"],
        ["policy", "check", "p.yaml", "-v"],
        ["completion", "bash", "-v"],
    ],
)
def test_v_works_before_and_after_the_command(argv: list[str]) -> None:
    assert parse(argv).verbose is True


@pytest.mark.parametrize("argv", [["-v", "completion", "bash"], ["completion", "bash", "-v"]])
def test_v_anywhere_turns_on_debug_logging(argv: list[str]) -> None:
    code = (
        "import logging, sys\n"
        "from smesh.cli import main\n"
        f"main({argv!r})\n"
        "print(logging.getLevelName(logging.getLogger().level), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stderr.splitlines()[-1] == "DEBUG"


@pytest.mark.parametrize("argv", [["status"], ["lab", "status"], ["capture", "status"]])
def test_without_v_logging_stays_quiet(argv: list[str]) -> None:
    assert parse(argv).verbose is False


def lab_of(args: argparse.Namespace) -> str:
    return str(getattr(args, "name", None) or args.lab)


def lab_argv(command: str, rest: str, *flags: str) -> list[str]:
    return [*command.split(), *flags, *rest.split()]


@pytest.mark.parametrize(("command", "rest"), LAB_COMMANDS, ids=[c for c, _ in LAB_COMMANDS])
def test_lab_is_named_by_lab_everywhere_and_name_still_works(command: str, rest: str) -> None:
    assert lab_of(parse(lab_argv(command, rest, "--lab", "mine"))) == "mine"
    if command.startswith("lab "):  # the lab verbs spelled it --name before
        assert lab_of(parse(lab_argv(command, rest, "--name", "mine"))) == "mine"


@pytest.mark.parametrize(("command", "rest"), LAB_COMMANDS, ids=[c for c, _ in LAB_COMMANDS])
def test_smesh_lab_names_the_default_lab(
    command: str, rest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SMESH_LAB", raising=False)
    assert lab_of(parse(lab_argv(command, rest))) == "smesh"
    monkeypatch.setenv("SMESH_LAB", "ci42")
    assert lab_of(parse(lab_argv(command, rest))) == "ci42"
    assert lab_of(parse(lab_argv(command, rest, "--lab", "other"))) == "other"  # flag wins
    monkeypatch.setenv("SMESH_LAB", "")
    assert lab_of(parse(lab_argv(command, rest))) == "smesh"


def test_bench_results_file_is_results_and_the_old_json_file_still_works() -> None:
    assert parse(["bench", "--results", "out.json"]).results == Path("out.json")
    assert parse(["bench", "--json", "out.json"]).results == Path("out.json")
    assert "--json" not in build_parser(["bench"]).format_help()


def test_every_command_is_configured_for_completion_only() -> None:
    """Running a command configures only its own parser (start-up time); every=True all."""
    only = build_parser(["status"])
    every = build_parser(every=True)
    choices = next(a.choices for a in every._actions if isinstance(a, argparse._SubParsersAction))
    assert set(choices) == set(COMMANDS)
    lab_only = next(a.choices for a in only._actions if isinstance(a, argparse._SubParsersAction))[
        "lab"
    ]
    assert not any(isinstance(a, argparse._SubParsersAction) for a in lab_only._actions)


def test_a_bad_smesh_lab_is_named_as_such() -> None:
    env = {**os.environ, "SMESH_LAB": "Bad_Name"}
    proc = subprocess.run(
        [sys.executable, "-m", "smesh", "lab", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("smesh: error: $SMESH_LAB: invalid lab name 'Bad_Name': ")
    assert proc.stdout == ""


def test_every_command_that_takes_lab_defaults_to_smesh_lab(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Generic over the parser, so a command added later (with add_lab or add_selection)
    is held to the same rule without being listed here."""
    monkeypatch.setenv("SMESH_LAB", "ci42")
    taking = []
    for path, sub in leaves(build_parser(every=True)):
        if "--lab" not in sub._option_string_actions:
            continue
        taking.append(" ".join(path))
        assert lab_of(parse([*path, *required_positionals(sub)])) == "ci42", path
        visible = {s for a in sub._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        assert "--name" not in visible, path  # the old spelling stays hidden
    assert {c for c, _ in LAB_COMMANDS} <= set(taking)
