"""The `smesh` command: subcommands only parse their arguments and call the packages.

Each subcommand lives in its own module with a ``register(subparsers)`` function; adding
one means adding its module name to :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from smesh import __version__
from smesh.errors import SmeshError

COMMANDS: tuple[str, ...] = (
    "lab",
    "agent",
    "status",
    "demo",
    "ca",
    "policy",
    "capture",
    "trace",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smesh", description="Transparent mutual TLS between pods, captured by eBPF."
    )
    parser.add_argument("--version", action="version", version=f"smesh {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"smesh.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SmeshError as exc:
        print(f"smesh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
