"""The lab's (or one named) agents' admin endpoints, for the commands that ask every agent.

A node whose agent is known to be down (the lab saw its process gone) or does not answer is
kept, with its error and the command that fixes it: an outage of one agent is what an
operator asks for, so it must not hide the others.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from smesh.agent import client
from smesh.cli.options import default_lab
from smesh.errors import SmeshError
from smesh.lab import api as lab_api
from smesh.lab.agents import DEBUG_PORT  # the agents ask /debug/* only
from smesh.lab.errors import LabError, UnknownMember


@dataclass
class Agent:
    """One admin endpoint to ask, and what to do when it does not answer."""

    label: str
    host: str
    port: int
    netns: str | None
    fix: str
    down: str | None = None  # known before asking: the lab saw its process gone
    doc: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def add_selection(parser: argparse.ArgumentParser) -> None:
    """``--lab L [--node N]`` or ``--admin HOST:PORT``: which agents a command asks."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--lab",
        default=default_lab(),
        metavar="NAME",
        help="every agent of this lab (default: $SMESH_LAB, else smesh; now %(default)s)",
    )
    where.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="one agent's debug endpoint (admin.debug: 127.0.0.1:15000)",
    )
    parser.add_argument("--node", help="only this node of the lab")


def lab_agents(args: argparse.Namespace) -> list[Agent]:
    """The agents ``--lab``/``--node`` (or ``--admin HOST:PORT``) name, each with the fix to
    print if it does not answer."""
    if getattr(args, "admin", None):
        host, _, port = args.admin.rpartition(":")
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            raise SmeshError(f"--admin {args.admin!r} is not HOST:PORT (e.g. 127.0.0.1:15000)")
        return [
            Agent(
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
                f"`smesh lab logs --lab {args.lab} {n['name']}` says why; `smesh lab kubectl "
                f"--lab {args.lab} -- -n {namespace} delete pod {name}` starts another"
            )
        else:
            fix = f"smesh lab restart-agent --lab {args.lab} {n['name']}"
            if n["agent_health"] in ("dead", "none"):
                pid = n["agent_pid"]
                down = f"the agent (pid {pid}) is not running" if pid else "no agent was started"
        found.append(Agent(n["name"], "127.0.0.1", DEBUG_PORT, n["netns"], fix, down))
    return found


class AgentUnanswered(SmeshError):
    """An agent gave no JSON object for a path: known down, unreachable, an error status
    (a route an agent of another version lacks) or a body that is not one."""


def fetch(agent: Agent, path: str) -> dict[str, Any]:
    """*agent*'s answer to GET *path*, a JSON object; AgentUnanswered says why there is none.

    One reader of every ``/debug/*`` document, so ``status``, ``policy explain`` and ``lab
    policy`` decode an answer alike; each decides for itself what no answer means (an
    error to report, an agent to leave out, or one to ask again).
    """
    if agent.down is not None:
        raise AgentUnanswered(agent.down)
    try:
        reply = client.get(agent.host, agent.port, path, netns=agent.netns)
    except client.AdminUnreachable as exc:
        raise AgentUnanswered(str(exc)) from None
    if reply.status != 200:
        reason = reply.body[:4096].decode(errors="replace").strip()
        raise AgentUnanswered(f"the agent answered {path} with {reply.status}: {reason}")
    try:
        doc = reply.json()
    except ValueError as exc:
        raise AgentUnanswered(f"the agent's answer is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise AgentUnanswered(f"the agent's answer is not a JSON object: {reply.body[:80]!r}")
    return doc


def ask(agent: Agent, path: str) -> None:
    """Fill *agent*'s ``doc`` with its answer to GET *path*, or its ``error``."""
    try:
        agent.doc = fetch(agent, path)
    except AgentUnanswered as exc:
        agent.error = str(exc)
