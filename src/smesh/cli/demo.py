"""`smesh demo`: the seed's story, live and verified."""

from __future__ import annotations

import argparse

from smesh.demo import story
from smesh.linux import privileges


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = subparsers.add_parser(
        "demo", help="show pod-to-pod traffic, as an attacker would see it"
    )
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    privileges.require("smesh demo")
    return 0 if story.run() else 1
