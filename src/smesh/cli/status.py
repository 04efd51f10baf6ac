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
from typing import Any

from smesh.cli.agents import Agent, add_selection, ask, lab_agents
from smesh.cli.output import add_output, table, wants_json
from smesh.cli.policy import held_policies, policy_lines


def configure(status: argparse.ArgumentParser) -> None:
    add_selection(status)
    add_output(status)
    status.set_defaults(func=_status)


def _expires(ts: float | None) -> str:
    if ts is None:
        return "-"
    left = dt.datetime.fromtimestamp(ts, dt.UTC) - dt.datetime.now(dt.UTC)
    hours = left.total_seconds() / 3600
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M}Z (in {hours:.1f} h)"


def _status(args: argparse.Namespace) -> int:
    agents = lab_agents(args)
    for agent in agents:
        ask(agent, "/debug/workloads")
    down = [a for a in agents if a.error is not None]
    policies = held_policies(agents)
    if wants_json(args):
        docs = [
            {**a.doc, "label": a.label, "policy": policies.get(a.label)}
            if a.error is None
            else {"label": a.label, "error": a.error, "fix": a.fix}
            for a in agents
        ]
        print(json.dumps(docs, indent=2))
    else:
        _print(agents)
        if policies:
            print("\npolicy:")
            for label, doc in policies.items():
                print("\n".join(f"  {line}" for line in policy_lines(label, doc)))
    if down:
        names = ", ".join(a.label for a in down)
        print(
            f"smesh: error: {len(down)} of {len(agents)} agents did not answer ({names})",
            file=sys.stderr,
        )
        return 1
    return 0


def _print(agents: list[Agent]) -> None:
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
