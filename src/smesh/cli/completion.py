"""`smesh completion bash|zsh`: a shell completion script, generated from the parser itself.

Generated rather than written by hand so it cannot drift from the commands: it is built from
every command's parser (``build_parser(every=True)``), the one place flags are declared.
Hidden aliases (``--json``, ``--name``) are left out, so completion teaches the convention.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHELLS = ("bash", "zsh")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "shell",
        choices=SHELLS,
        help="bash: `source <(smesh completion bash)`; zsh: write it as _smesh in $fpath",
    )
    parser.set_defaults(func=_completion)


def script(shell: str) -> str:
    import shtab  # noqa: PLC0415 - only this command needs it

    from smesh.cli import build_parser  # noqa: PLC0415 - the package imports this module

    parser = build_parser(every=True)
    _complete_paths(parser, shtab.FILE)
    return str(shtab.complete(parser, shell=shell))


def _complete_paths(parser: argparse.ArgumentParser, how: object) -> None:
    """Arguments parsed as a ``Path`` complete file names (shtab reads ``.complete``)."""
    for action in parser._actions:
        if action.type is Path:
            action.complete = how  # type: ignore[attr-defined]
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _complete_paths(sub, how)


def _completion(args: argparse.Namespace) -> int:
    print(script(args.shell))
    return 0
