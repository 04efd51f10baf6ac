"""`smesh install check`: one line per check of an installation, with a fix for each failure."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from pathlib import Path

from smesh.cli.output import add_output, show, wants_json


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="install_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "check",
        help="check the control plane, CRDs, controller, trust bundle and every node's agent",
    )
    check.add_argument(
        "--kubeconfig", type=Path, help="default: $KUBECONFIG, ~/.kube/config or in-cluster"
    )
    add_output(check)
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from smesh.install import check  # noqa: PLC0415
    from smesh.install.cluster import Cluster  # noqa: PLC0415

    cluster = Cluster(args.kubeconfig)
    try:
        results = check.run(cluster.server, cluster.get, cluster.items, dt.datetime.now(dt.UTC))
    finally:
        cluster.close()
    failed = [r for r in results if not r.ok]
    if wants_json(args):
        show(args, {"ok": not failed, "checks": [dataclasses.asdict(r) for r in results]})
        return 1 if failed else 0
    for result in results:
        print(result.line())
    print(f"{len(results) - len(failed)} of {len(results)} checks passed")
    return 1 if failed else 0
