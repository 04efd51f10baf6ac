"""`smesh flows`: every connection of every node as it opens and closes (``hubble observe``).

Each agent serves its own events (``GET /debug/flows``, docs/agent.md); this command asks
every agent of the lab and merges them by time. A connection between two nodes shows at
both ends, one row per agent that saw it, as hubble shows it: each row is what that node
did (the source's agent tunnels, the destination's agent decides by policy, so the rule is
on the destination's row), and ``request_id`` joins the two. Joining them into one row
would hide a side that did not report (its agent down, its stream behind) and the
connections that have only one side (passthrough, a denial before any tunnel).
"""

from __future__ import annotations

import argparse
import functools
import json
import queue
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from smesh.agent import client
from smesh.agent.flowlog import VERDICTS, FlowFilter, matches_doc
from smesh.cli.agents import Agent, add_selection, lab_agents
from smesh.cli.output import add_output, wants_json

RECONNECT_DELAY = 0.5


def configure(flows: argparse.ArgumentParser) -> None:
    add_selection(flows)
    flows.add_argument(
        "-f", "--follow", action="store_true", help="new events as they happen, until Ctrl-C"
    )
    flows.add_argument("--pod", help="only connections from or to this pod (NAME or NS/NAME)")
    flows.add_argument("--namespace", help="only connections from or to this namespace")
    flows.add_argument("--verdict", choices=VERDICTS, help="only connections with this verdict")
    add_output(flows)
    flows.set_defaults(func=_flows)


def merge(streams: Iterable[Iterable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every agent's events in one list, ordered by time (each line's ISO UTC stamp)."""
    return sorted((doc for docs in streams for doc in docs), key=lambda doc: doc["time"])


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def _end(side: dict[str, Any], port: int = 0) -> str:
    if side["pod"]:
        name = f"{side['namespace']}/{side['pod']}" if side["namespace"] else side["pod"]
        where = f"{name}:{port}" if port else name
    else:
        where = side["address"] or "(outside the mesh)"
    if side["identity"]:
        where += f" ({side['identity'].removeprefix('spiffe://')})"
    return where


def render(doc: dict[str, Any]) -> str:
    """One event as one line of text: time, node, event, verdict, source → destination,
    mTLS, bytes each way, duration and result (with why, when it failed)."""
    when = doc["time"][11:23]  # HH:MM:SS.mmm (UTC)
    node = doc["node"]
    if doc["event"] == "dropped":
        return f"{when} {node} DROPPED {doc['dropped']} events: {doc['detail']}"
    verdict = doc["verdict"] + (f" by {doc['rule']}" if doc["rule"] else "")
    destination = doc["destination"]
    flow = f"{_end(doc['source'])} -> {_end(destination, destination['port'])}"
    line = f"{when} {node} {doc['event']:<7} {verdict:<24} {flow}"
    if doc["event"] == "refused":
        return f"{line} x{doc['count']}"
    line += " mTLS" if doc["mtls"] else " plain"
    if doc["event"] == "close":
        line += (
            f" sent {_size(doc['bytes_sent'])} received {_size(doc['bytes_received'])}"
            f" in {doc['duration_s']:.3f} s: {doc['result']}"
        )
        if doc["result"] != "ok" and doc["detail"]:
            line += f" ({doc['detail']})"
    return line


def _path(flow_filter: FlowFilter, follow: bool) -> str:
    query = flow_filter.query()
    if follow:
        query["follow"] = "1"
    return "/debug/flows" + (f"?{urllib.parse.urlencode(query)}" if query else "")


def _read(
    agent: Agent,
    path: str,
    read_timeout: float | None,
    on_answer: Callable[[], None] = lambda: None,
) -> Iterable[dict[str, Any]]:
    for line in client.stream(
        agent.host,
        agent.port,
        path,
        netns=agent.netns,
        read_timeout=read_timeout,
        on_answer=on_answer,
    ):
        try:
            yield json.loads(line)
        except ValueError as exc:
            raise client.AdminRefused(f"the agent's answer is not JSON lines: {exc}") from None


def _print(doc: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(doc) if as_json else render(doc), flush=True)


def _tell(agent: Agent) -> None:
    print(f"smesh: {agent.label}: {agent.error}\n  fix: {agent.fix}", file=sys.stderr)


def _report(down: list[Agent], total: int, told: bool = False) -> int:
    """Each agent that did not answer (unless *told* already), and the exit status."""
    for agent in down if not told else ():
        _tell(agent)
    if not down:
        return 0
    names = ", ".join(a.label for a in down)
    print(
        f"smesh: error: {len(down)} of {total} agents did not answer ({names}); "
        "the flows shown are the others'",
        file=sys.stderr,
    )
    return 1


def _flows(args: argparse.Namespace) -> int:
    agents = lab_agents(args)
    flow_filter = FlowFilter(args.pod, args.namespace, args.verdict)
    if args.follow:
        return _follow(agents, flow_filter, wants_json(args))
    path = _path(flow_filter, follow=False)
    answers: list[list[dict[str, Any]]] = []
    for agent in agents:
        if agent.down is not None:
            agent.error = agent.down
            continue
        try:
            answers.append(list(_read(agent, path, read_timeout=10.0)))
        except (client.AdminUnreachable, client.AdminRefused) as exc:
            agent.error = str(exc)
    flows = [doc for doc in merge(answers) if matches_doc(flow_filter, doc)]
    down = [a for a in agents if a.error is not None]
    if wants_json(args):
        errors = [{"node": a.label, "error": a.error, "fix": a.fix} for a in down]
        print(json.dumps({"flows": flows, "errors": errors}, indent=2))
    else:
        for doc in flows:
            print(render(doc))
        if not flows:
            print("no flows recorded (that match)", file=sys.stderr)
    return _report(down, len(agents))


def _follow(agents: list[Agent], flow_filter: FlowFilter, as_json: bool) -> int:
    """Every agent's live stream, one thread each, printed as the events come.

    A stream the agent ends (it stopped, or handed the node over to a new agent) is asked
    for again; an agent that does not answer is reported with its fix and the others go on.
    "following" is said once every agent answered (or failed): what happens after, shows.
    """
    path = _path(flow_filter, follow=True)
    events: queue.Queue[tuple[Agent, dict[str, Any] | Exception | None]] = queue.Queue()

    def pump(agent: Agent) -> None:
        try:
            while True:
                answered = functools.partial(events.put, (agent, None))
                for doc in _read(agent, path, read_timeout=None, on_answer=answered):
                    events.put((agent, doc))
                time.sleep(RECONNECT_DELAY)
        except (client.AdminUnreachable, client.AdminRefused) as exc:
            events.put((agent, exc))

    live = 0
    for agent in agents:
        if agent.down is not None:
            agent.error = agent.down
            _tell(agent)
            continue
        threading.Thread(target=pump, args=(agent,), daemon=True, name=agent.label).start()
        live += 1
    waiting = {a.label for a in agents if a.error is None}
    said = False
    try:
        while live:
            if not waiting and not said:
                names = ", ".join(a.label for a in agents if a.error is None)
                print(f"following the flows of {names}; Ctrl-C stops", file=sys.stderr, flush=True)
                said = True
            try:
                agent, item = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, Exception):
                agent.error = str(item)
                _tell(agent)
                live -= 1
                waiting.discard(agent.label)
            elif item is None:
                waiting.discard(agent.label)
            elif matches_doc(flow_filter, item):
                _print(item, as_json)
    except KeyboardInterrupt:
        pass  # the way to stop following: quietly
    return _report([a for a in agents if a.error is not None], len(agents), told=True)
