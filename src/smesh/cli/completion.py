"""`smesh completion bash|zsh`: a shell completion script, generated from the parser itself.

Generated rather than written by hand so it cannot drift from the commands: it is built from
every command's parser (``build_parser(every=True)``), the one place flags are declared.
Hidden aliases (``--json``, ``--name``) are left out, so completion teaches the convention.
"""

from __future__ import annotations

import argparse

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

    return str(shtab.complete(build_parser(every=True), shell=shell))


def _completion(args: argparse.Namespace) -> int:
    print(script(args.shell))
    return 0
