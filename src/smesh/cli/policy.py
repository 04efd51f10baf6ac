"""`smesh policy check FILE`: validate an authorization policy before an agent loads it."""

from __future__ import annotations

import argparse
from pathlib import Path

from smesh.policy import load


def configure(policy: argparse.ArgumentParser) -> None:
    verbs = policy.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    policy = load(args.file)
    allow = sum(r.action == "allow" for r in policy.rules)
    print(
        f"{args.file}: valid — {len(policy.rules)} rules ({allow} allow, "
        f"{len(policy.rules) - allow} deny), default {policy.default}"
    )
    return 0
