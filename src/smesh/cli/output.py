"""Terminal output shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import select
import sys
from collections.abc import Sequence
from typing import Any

#: What ``-o/--output`` accepts on every command that prints (kubectl's convention).
OUTPUTS = ("text", "json")


def add_output(parser: argparse.ArgumentParser) -> None:
    """``-o/--output text|json``, the one output flag of every command that prints.

    ``--json`` stays as a hidden alias of ``-o json`` so scripts written before keep working.
    """
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default="text",
        help="text (default) or json (one JSON document; one object per line when streaming)",
    )
    parser.add_argument(
        "--json", dest="output", action="store_const", const="json", help=argparse.SUPPRESS
    )


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "text") == "json"


def show(args: argparse.Namespace, doc: Any, text: str | None = None) -> None:
    """Print *doc* as JSON when ``-o json`` asks for it, else *text* (when there is any)."""
    if wants_json(args):
        print(json.dumps(doc, indent=2))
    elif text:
        print(text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain aligned columns, the way kubectl prints them."""
    cells = [list(headers), *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (POLLERR on its write end):
    ``smesh ... | head -1`` after head exited."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _fd, event in poller.poll(0))
    except (OSError, ValueError):
        return False
