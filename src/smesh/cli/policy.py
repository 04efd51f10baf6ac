"""`smesh policy check FILE`: validate an authorization policy before an agent loads it.

``-o json`` answers an invalid policy with a document too (``valid: false`` and the error,
exit 1), so a script or CI step reads one format whatever the file holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smesh.cli.output import add_output, show, wants_json
from smesh.policy import PolicyError, load


def configure(policy: argparse.ArgumentParser) -> None:
    verbs = policy.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path)
    add_output(check)
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        policy = load(args.file)
    except PolicyError as exc:
        if not wants_json(args):
            raise
        show(args, {"file": str(args.file), "valid": False, "error": str(exc)})
        print(f"smesh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    allow = sum(r.action == "allow" for r in policy.rules)
    show(
        args,
        {
            "file": str(args.file),
            "valid": True,
            "rules": len(policy.rules),
            "allow": allow,
            "deny": len(policy.rules) - allow,
            "default": policy.default,
        },
        f"{args.file}: valid — {len(policy.rules)} rules ({allow} allow, "
        f"{len(policy.rules) - allow} deny), default {policy.default}",
    )
    return 0
