"""`smesh check`: can this machine run a smesh agent? One line per check, a fix per failure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from smesh.capture import preflight
from smesh.cli.output import add_output, wants_json

MARKS = {"ok": "✔", "warn": "!", "fail": "✘"}


def configure(check: argparse.ArgumentParser) -> None:
    add_output(check)
    check.add_argument(
        "--bpf-dir",
        type=Path,
        help="the compiled BPF objects to check (default: $SMESH_BPF_DIR or the build tree)",
    )
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    places = preflight.Places() if args.bpf_dir is None else preflight.Places(objects=args.bpf_dir)
    checks = preflight.run(places)
    failed = [c for c in checks if c.failed]
    if wants_json(args):
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{MARKS[c.status]} {c.name.ljust(width)}  {c.detail}")
            if c.fix and c.status != "ok":
                print(f"  {''.ljust(width)}  fix: {c.fix}")
        warned = sum(c.status == "warn" for c in checks)
        warnings = "1 warning" if warned == 1 else f"{warned} warnings"
        print(
            f"\n{len(checks) - len(failed) - warned} ok, {warnings}, {len(failed)} failed"
            + ("" if failed else ": this machine can run a smesh agent")
        )
    return 1 if failed else 0
