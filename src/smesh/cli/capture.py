"""`smesh capture attach|detach|status`: capture a lab's pods without (or beside) the agent."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from smesh.capture import lab as capture_lab
from smesh.capture.node import MODES
from smesh.cli.options import add_lab
from smesh.cli.output import add_output, show, table, wants_json


def configure(capture: argparse.ArgumentParser) -> None:
    verbs = capture.add_subparsers(dest="verb", metavar="VERB", required=True)

    def lab_args(parser: argparse.ArgumentParser, node_help: str) -> argparse.ArgumentParser:
        add_lab(parser)
        parser.add_argument("--node", help=node_help)
        return parser

    attach = lab_args(
        verbs.add_parser("attach", help="capture the pods of a lab's node(s), pinned"),
        "only this node (default: every node)",
    )
    attach.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="auto (default: eBPF when the kernel accepts it), ebpf or nftables",
    )
    attach.add_argument(
        "--exclude-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="a destination port never captured (repeat; 18000 and 18001 always are)",
    )
    add_output(attach)
    attach.set_defaults(func=_attach)

    detach = lab_args(
        verbs.add_parser("detach", help="remove capture: pods go back to plain connects"),
        "only this node (default: every node)",
    )
    add_output(detach)
    detach.set_defaults(func=_detach)

    status = verbs.add_parser("status", help="mode, pods, counters and map occupancy")
    add_lab(status)
    add_output(status)
    status.set_defaults(func=_status)


def _quiet(args: argparse.Namespace) -> None:
    """The summary lines say it all; the library's per-pod log lines are for -v (and agents)."""
    if not args.verbose:
        logging.getLogger("smesh.capture").setLevel(logging.WARNING)


def _attach(args: argparse.Namespace) -> int:
    _quiet(args)
    config = capture_lab.lab_config(tuple(args.exclude_port))
    results = capture_lab.attach(args.lab, args.node, args.mode, config)
    show(
        args,
        [
            {"node": r.node, "pods": list(r.pods), "mode": r.choice.mode, "reason": r.choice.reason}
            for r in results
        ],
        "\n".join(
            f"{r.node}: {', '.join(r.pods) or 'no pods'} captured with {r.choice.mode} "
            f"({r.choice.reason})"
            for r in results
        ),
    )
    return 0


def _detach(args: argparse.Namespace) -> int:
    _quiet(args)
    done = capture_lab.detach(args.lab, args.node)
    show(
        args,
        [{"node": node, "result": what} for node, what in done.items()],
        "\n".join(f"{node}: {what}" for node, what in done.items()),
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    doc = capture_lab.status(args.lab)
    if wants_json(args):
        print(json.dumps(doc, indent=2))
        return 0
    print(
        table(
            ["NODE", "MODE", "PODS", "TRACKED CONNECTIONS", "LINKS"],
            [_node_row(n) for n in doc["nodes"]],
        )
    )
    rows = [
        [
            pod["name"],
            node["name"],
            pod["captured"],
            pod["pass_not_mesh"],
            pod["pass_port"],
            pod["pass_loopback"],
            pod["pass_self"],
            pod["pass_not_tcp"],
            pod["denied"] + pod["map_full"],
            pod["events_dropped"],
            pod["plaintext_refused"],
        ]
        for node in doc["nodes"]
        for pod in node["pods"]
    ]
    if rows:
        print()
        print(
            table(
                [
                    "POD",
                    "NODE",
                    "CAPTURED",
                    "NOT-MESH",
                    "PORT",
                    "LOOPBACK",
                    "SELF",
                    "NOT-TCP",
                    "FAILED",
                    "EVENTS-DROPPED",
                    "PLAINTEXT-REFUSED",
                ],
                rows,
            )
        )
    return 0


def _node_row(node: dict[str, Any]) -> list[Any]:
    if node["mode"] == "ebpf":
        tracked = f"{node['connections']}/{node['connections_capacity']}"
        links = node["links"]
    elif node["mode"] == "nftables":
        tracked = f"{node['conntrack_entries']} (conntrack)"
        links = "-"
    else:
        tracked, links = "-", "-"
    return [node["name"], node["mode"], len(node["pods"]), tracked, links]
