"""`smesh lab up|down|status|exec`: the virtual cluster's command-line contract."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from smesh.cli.output import table
from smesh.lab import api, topology


def configure(lab: argparse.ArgumentParser) -> None:
    verbs = lab.add_subparsers(dest="verb", metavar="VERB", required=True)

    def named(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument(
            "--name", default=topology.DEFAULT_NAME, help="lab name (default: smesh)"
        )
        return parser

    up = named(verbs.add_parser("up", help="build the cluster"))
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--pods-per-node", type=int, default=2, help="pods on each node (default 2)")
    up.add_argument("--no-mesh", action="store_true", help="plain traffic: smesh switched off")
    up.add_argument(
        "--identity",
        action="append",
        default=[],
        metavar="POD=NS/SA",
        help="a pod's Kubernetes namespace and service account (default: default/POD)",
    )
    up.add_argument("--policy", type=Path, help="authorization policy file for the agents")
    up.add_argument(
        "--agent-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an agent setting, e.g. --agent-set timeouts.request=1s",
    )
    up.set_defaults(func=_up)

    down = named(verbs.add_parser("down", help="remove everything the lab made"))
    down.set_defaults(func=_down)

    status = named(verbs.add_parser("status", help="nodes, pods and agents"))
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=_status)

    restart = named(verbs.add_parser("restart-agent", help="start a node's agent again"))
    restart.add_argument("node", metavar="NODE", help="e.g. node-1")
    restart.set_defaults(func=_restart)

    run = named(verbs.add_parser("exec", help="run a command inside a pod (or node)"))
    run.add_argument("member", metavar="POD", help="pod (or node) name, e.g. pod-1")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")
    run.set_defaults(func=_exec)


def _up(args: argparse.Namespace) -> int:
    topo = api.up(
        args.name,
        args.nodes,
        args.pods_per_node,
        mesh=not args.no_mesh,
        identities=args.identity,
        policy=args.policy,
        agent_overrides=args.agent_set,
    )
    mode = "mesh on" if topo.mesh else "mesh off (--no-mesh)"
    print(f"lab {topo.name!r} is up: {len(topo.nodes)} nodes, {len(topo.pods)} pods, {mode}")
    _print_tables(api.status(topo.name))
    return 0


def _down(args: argparse.Namespace) -> int:
    existed = api.down(args.name)
    print(f"lab {args.name!r} " + ("removed" if existed else "was not up; nothing to remove"))
    return 0


def _status(args: argparse.Namespace) -> int:
    doc = api.status(args.name)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print_tables(doc)
    return 0


def _restart(args: argparse.Namespace) -> int:
    process = api.restart_agent(args.name, args.node)
    print(f"agent of {args.node} restarted (pid {process.pid}) and ready")
    return 0


def _exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    api.exec_argv(args.name, args.member, argv)
    return 0  # not reached: exec replaced this process


def _print_tables(doc: dict[str, Any]) -> None:
    print(
        table(
            ["NODE", "NETNS", "IP", "POD CIDR", "AGENT PID", "AGENT"],
            [
                [
                    n["name"],
                    n["netns"],
                    n["ip"],
                    n["pod_cidr"],
                    n["agent_pid"] or "-",
                    n["agent_health"],
                ]
                for n in doc["nodes"]
            ],
        )
    )
    print()
    print(
        table(
            ["POD", "NODE", "IP", "IPV6", "IDENTITY", "MESHED", "NETNS", "CGROUP"],
            [
                [
                    p["name"],
                    p["node"],
                    p["ip"],
                    p["ip6"],
                    f"{p['namespace']}/{p['service_account']}",
                    "yes" if p["meshed"] else "no",
                    p["netns"],
                    p["cgroup"],
                ]
                for p in doc["pods"]
            ],
        )
    )
