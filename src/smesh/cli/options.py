"""The options every command spells the same way: the lab it acts on, and the global flags.

One spelling everywhere is the point: ``--lab`` names a lab on every command that takes one
(``$SMESH_LAB`` when it is not given, so a shell, a CI job or the README test can work in a
lab of its own without editing each command), and ``-v`` works before or after the command.
"""

from __future__ import annotations

import argparse
import os

from smesh.errors import SmeshError

#: The lab a command acts on when ``--lab`` is not given; unset or empty: ``smesh``.
LAB_ENV = "SMESH_LAB"
_DEFAULT_LAB = "smesh"  # smesh.lab.topology.DEFAULT_NAME, without importing the lab here


def default_lab() -> str:
    return os.environ.get(LAB_ENV) or _DEFAULT_LAB


def check_lab_env(args: argparse.Namespace) -> None:
    """A bad ``$SMESH_LAB`` is reported as that, not as a bad ``--lab`` nobody typed."""
    value = os.environ.get(LAB_ENV)
    if not value or value not in (getattr(args, "lab", None), getattr(args, "name", None)):
        return
    from smesh.lab.topology import validate_name  # noqa: PLC0415 - only when it is set

    try:
        validate_name(value)
    except SmeshError as exc:
        raise type(exc)(f"${LAB_ENV}: {exc}") from None


def add_lab(parser: argparse.ArgumentParser, dest: str = "lab") -> None:
    """``--lab NAME`` (default ``$SMESH_LAB``, else ``smesh``); ``--name`` a hidden alias,
    as the lab verbs spelled it before."""
    parser.add_argument(
        "--lab",
        dest=dest,
        default=default_lab(),
        metavar="NAME",
        help=f"the lab (default: ${LAB_ENV}, else {_DEFAULT_LAB}; now %(default)s)",
    )
    parser.add_argument("--name", dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_globals(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """The flags that mean the same to every command.

    Below the top parser they default to SUPPRESS: a sub-parser then sets ``verbose`` only
    when the flag is written after the command, and never resets what ``smesh -v`` set.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="debug logging (before or after the command)",
    )


def spread_globals(parser: argparse.ArgumentParser) -> None:
    """Give every sub-parser below *parser* the global flags, so they work in any position."""
    # argparse has no public walk of its sub-parsers; shtab reads the same attributes
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in {id(p): p for p in action.choices.values()}.values():  # aliases: once
            if "--verbose" not in sub._option_string_actions:
                add_globals(sub)
            spread_globals(sub)


def add_log_format(parser: argparse.ArgumentParser) -> None:
    """``--log-format json|text`` for the long-running commands (the signing service, the
    controller): JSON lines by default, as the agent's ``logging.format``, so one log
    pipeline reads every smesh process."""
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="json (default: one object per line, as the agent logs) or text",
    )


def configure_logs(args: argparse.Namespace) -> None:
    """Route the process's logs as ``--log-format`` and ``-v`` say."""
    from smesh.agent import logs  # noqa: PLC0415

    logs.configure(args.log_format, "debug" if getattr(args, "verbose", False) else "info")
