"""`smesh status`: what running agents hold — workloads, certificates, live connections.

Every node is a row, whether its agent answers or not: an outage of one agent is what an
operator runs ``status`` for, so it must not hide the others. A node whose agent does not
answer is shown with the error and the command that fixes it, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from smesh.agent import client
from smesh.cli.output import table
from smesh.errors import SmeshError
from smesh.lab import api as lab_api
from smesh.lab.errors import LabError, UnknownMember


def configure(status: argparse.ArgumentParser) -> None:
    where = status.add_mutually_exclusive_group()
    where.add_argument("--lab", default="smesh", help="every agent of this lab (default smesh)")
    where.add_argument("--admin", metavar="HOST:PORT", help="one agent's admin endpoint")
    status.add_argument("--node", help="only this node of the lab")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


@dataclass
class _Agent:
    """One admin endpoint to ask, and what to do when it does not answer."""

    label: str
    host: str
    port: int
    netns: str | None
    fix: str
    down: str | None = None  # known before asking: the lab saw its process gone
    doc: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def _agents(args: argparse.Namespace) -> list[_Agent]:
    if args.admin:
        host, _, port = args.admin.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise SmeshError(f"--admin {args.admin!r} is not HOST:PORT (e.g. 127.0.0.1:15000)")
        return [
            _Agent(
                args.admin,
                host.strip("[]"),
                int(port),
                None,
                f"check that the agent runs and serves its admin endpoint on {args.admin}",
            )
        ]
    doc = lab_api.status(args.lab)
    names = [n["name"] for n in doc["nodes"]]
    if args.node is not None and args.node not in names:
        raise UnknownMember(
            f"lab {args.lab!r} has no node {args.node!r} (nodes: {', '.join(names)})"
        )
    if not doc["mesh"]:
        raise LabError(f"lab {args.lab!r} runs without the mesh (--no-mesh): it has no agents")
    found = []
    for n in doc["nodes"]:
        if args.node not in (None, n["name"]):
            continue
        down = None
        if doc.get("install") == "chart":
            pod = (n.get("agent_pod") or "smesh-system/POD").split(",")[0]
            namespace, _, name = pod.partition("/")
            fix = (
                f"`smesh lab logs --name {args.lab} {n['name']}` says why; `smesh lab kubectl "
                f"--name {args.lab} -- -n {namespace} delete pod {name}` starts another"
            )
        else:
            fix = f"smesh lab restart-agent --name {args.lab} {n['name']}"
            if n["agent_health"] in ("dead", "none"):
                pid = n["agent_pid"]
                down = f"the agent (pid {pid}) is not running" if pid else "no agent was started"
        found.append(_Agent(n["name"], "127.0.0.1", 15000, n["netns"], fix, down))
    return found


def _expires(ts: float | None) -> str:
    if ts is None:
        return "-"
    left = dt.datetime.fromtimestamp(ts, dt.UTC) - dt.datetime.now(dt.UTC)
    hours = left.total_seconds() / 3600
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M}Z (in {hours:.1f} h)"


def _ask(agent: _Agent) -> None:
    if agent.down is not None:
        agent.error = agent.down
        return
    try:
        agent.doc = client.get(agent.host, agent.port, "/debug/workloads", netns=agent.netns).json()
    except client.AdminUnreachable as exc:
        agent.error = str(exc)
    except ValueError as exc:
        agent.error = f"the agent's answer is not JSON: {exc}"


def _status(args: argparse.Namespace) -> int:
    agents = _agents(args)
    for agent in agents:
        _ask(agent)
    down = [a for a in agents if a.error is not None]
    if args.json:
        docs = [
            {**a.doc, "label": a.label}
            if a.error is None
            else {"label": a.label, "error": a.error, "fix": a.fix}
            for a in agents
        ]
        print(json.dumps(docs, indent=2))
    else:
        _print(agents)
    if down:
        names = ", ".join(a.label for a in down)
        print(
            f"smesh: error: {len(down)} of {len(agents)} agents did not answer ({names})",
            file=sys.stderr,
        )
        return 1
    return 0


def _print(agents: list[_Agent]) -> None:
    rows: list[list[Any]] = []
    for agent in agents:
        if agent.error is not None:
            rows.append([agent.label, "-", "-", "AGENT DOWN", "-", "-"])
            continue
        workloads = agent.doc.get("workloads", [])
        if not workloads:
            rows.append([agent.label, "-", "-", "no workloads", "-", "-"])
        for w in workloads:
            rows.append(
                [
                    agent.label,
                    w["name"],
                    w["identity"],
                    w["stage"] + (f" ({w['error']})" if w["error"] else ""),
                    _expires(w["certificate_expires"]),
                    w["active_connections"],
                ]
            )
    print(table(["NODE", "POD", "IDENTITY", "STATE", "CERTIFICATE EXPIRES", "CONNECTIONS"], rows))
    modes = ", ".join(f"{a.label}: {a.doc['capture']}" for a in agents if a.error is None)
    if modes:
        print(f"\ncapture: {modes}")
    for agent in agents:
        if agent.error is not None:
            print(f"\n{agent.label}: {agent.error}\n  fix: {agent.fix}")
