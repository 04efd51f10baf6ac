"""`smesh demo`: the seed's story, live and verified."""

from __future__ import annotations

import argparse

from smesh.demo import story
from smesh.linux import privileges


def configure(demo: argparse.ArgumentParser) -> None:
    demo.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    privileges.require("smesh demo")
    return 0 if story.run() else 1
