"""iproute2 as smesh's netlink client: `ip -batch` per namespace keeps the lab fast."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from typing import Any

from smesh.linux.errors import CommandFailed


def _run(args: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()
        raise CommandFailed(f"`{' '.join(args)}` failed: {detail[-1] if detail else 'no output'}")
    return proc.stdout


def ip(*args: str, netns: str | None = None) -> str:
    prefix = ["ip"] if netns is None else ["ip", "-n", netns]
    return _run([*prefix, *args])


def ip_json(*args: str, netns: str | None = None) -> Any:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def batch(commands: Iterable[str], netns: str | None = None) -> None:
    """Run many `ip` commands in one process; stops at the first failure and says which."""
    lines = list(commands)
    if not lines:
        return
    prefix = ["ip"] if netns is None else ["ip", "-n", netns]
    _run([*prefix, "-batch", "-"], stdin="\n".join(lines) + "\n")
