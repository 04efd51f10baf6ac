"""`smesh status`: what running agents hold — workloads, certificates, live connections."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from smesh.agent import client
from smesh.cli.output import table
from smesh.lab import api as lab_api


def configure(status: argparse.ArgumentParser) -> None:
    where = status.add_mutually_exclusive_group()
    where.add_argument("--lab", default="smesh", help="every agent of this lab (default smesh)")
    where.add_argument("--admin", metavar="HOST:PORT", help="one agent's admin endpoint")
    status.add_argument("--node", help="only this node of the lab")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def _agents(args: argparse.Namespace) -> list[tuple[str, str, int, str | None]]:
    """(label, host, port, netns) of the admin endpoints to ask."""
    if args.admin:
        host, _, port = args.admin.rpartition(":")
        return [(args.admin, host.strip("[]"), int(port), None)]
    doc = lab_api.status(args.lab)
    return [
        (n["name"], "127.0.0.1", 15000, n["netns"])
        for n in doc["nodes"]
        if args.node in (None, n["name"])
    ]


def _expires(ts: float | None) -> str:
    if ts is None:
        return "-"
    left = dt.datetime.fromtimestamp(ts, dt.UTC) - dt.datetime.now(dt.UTC)
    hours = left.total_seconds() / 3600
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M}Z (in {hours:.1f} h)"


def _status(args: argparse.Namespace) -> int:
    docs: list[dict[str, Any]] = []
    for label, host, port, netns in _agents(args):
        doc = client.get(host, port, "/debug/workloads", netns=netns).json()
        doc["label"] = label
        docs.append(doc)
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    rows = [
        [
            doc["label"],
            w["name"],
            w["identity"],
            w["stage"] + (f" ({w['error']})" if w["error"] else ""),
            _expires(w["certificate_expires"]),
            w["active_connections"],
        ]
        for doc in docs
        for w in doc["workloads"]
    ]
    print(table(["NODE", "POD", "IDENTITY", "STATE", "CERTIFICATE EXPIRES", "CONNECTIONS"], rows))
    modes = ", ".join(f"{d['label']}: {d['capture']}" for d in docs)
    print(f"\ncapture: {modes}")
    return 0
