"""``smesh lab policy FILE``: install an authorization policy into a running lab.

The file is validated first: a bad one is refused before any agent is touched, and every
agent keeps its policy. A good one replaces the lab's policy file (one rename, so an agent
never reads half of it) and each agent is sent SIGHUP by the pid the lab recorded; then
each agent's ``/debug/policy`` says whether it loaded the file (the digest of what it
holds) or refused it (the error). Only process agents read a policy file: a chart lab's
agents take AuthorizationPolicy objects, which ``smesh lab kubectl -- apply -f`` installs
(a policy file does not translate to them losslessly: its ``to`` names namespaces,
service accounts and pods where an object selects pods by label, and its ``default`` has
no object form).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from smesh.cli.agents import Agent, AgentUnanswered, fetch
from smesh.lab import agents, api, state
from smesh.lab.errors import LabError
from smesh.policy import digest, load

#: How long an agent gets to answer that it reloaded (a reload is milliseconds; the
#: machine may be busy).
RELOAD_TIMEOUT = 15.0


@dataclass(frozen=True)
class Verdict:
    """One agent's answer to the reload."""

    node: str
    loaded: bool
    digest: str | None  # of the policy file it holds now
    error: str | None  # why it refused, or why it could not be asked

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "loaded": self.loaded,
            "digest": self.digest,
            "error": self.error,
        }


def _agent_policy(netns: str) -> dict[str, Any] | None:
    """The node's agent's ``/debug/policy``; None while it does not give one (the caller
    asks again until its deadline)."""
    agent = Agent(netns, "127.0.0.1", agents.DEBUG_PORT, netns, fix="")
    try:
        return fetch(agent, "/debug/policy")
    except AgentUnanswered:
        return None


def _configured_policy(lab: str, node: str) -> str | None:
    try:
        config = yaml.safe_load((agents.node_dir(lab, node) / "agent.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    found = config.get("policy") if isinstance(config, dict) else None
    return str(found) if found is not None else None


def install(name: str, path: Path) -> tuple[str, list[Verdict]]:
    """Validate *path*, make it lab *name*'s policy, reload every agent; return the file's
    digest and each agent's verdict."""
    expected = digest(load(path))  # a bad file stops here: nothing touched
    text = path.read_bytes()
    lab, topo = api.load(name)
    if not topo.mesh:
        raise LabError(f"lab {name!r} runs without the mesh (--no-mesh): it has no agents")
    if lab.settings.get("install") == "chart":
        raise LabError(
            f"lab {name!r} runs the chart's agents, which take AuthorizationPolicy objects, "
            f"not a policy file: write the rules as objects (docs/policy-kubernetes.md) and "
            f"`smesh lab kubectl --lab {name} -- apply -f OBJECTS.yaml`"
        )
    target = state.policy_path(name)
    stale = [n.name for n in topo.nodes if _configured_policy(name, n.name) != str(target)]
    if stale:
        raise LabError(
            f"the agents of {', '.join(stale)} do not read the lab's policy file {target} "
            f"(a lab built by an older smesh); bring the lab down and up again"
        )
    with api._locked(name):  # no restart-agent in between
        lab, topo = api.load(name)
        before = {n.name: _agent_policy(n.netns) for n in topo.nodes}
        tmp = target.with_name(target.name + ".new")
        tmp.write_bytes(text)
        os.replace(tmp, target)  # a link to `up --policy`'s file becomes a file of its own
        signalled: dict[str, str | None] = {}
        for node in topo.nodes:
            process = lab.agents.get(node.name)
            if process is None or not process.alive():
                signalled[node.name] = (
                    f"the agent is not running; it loads the policy when started "
                    f"(smesh lab restart-agent --lab {name} {node.name})"
                )
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGHUP)
            signalled[node.name] = None
    verdicts = []
    for node in topo.nodes:
        why_not = signalled[node.name]
        if why_not is not None:
            verdicts.append(Verdict(node.name, False, None, why_not))
            continue
        old = before[node.name]
        verdicts.append(_wait(node.name, node.netns, old["reloads"] if old else None, expected))
    return expected, verdicts


def _wait(node: str, netns: str, reloads: int | None, expected: str) -> Verdict:
    """Until the agent counts one more reload than *reloads* (None: it did not answer
    before the signal, so any answer will do), then what it says: loaded is loaded with
    the *expected* digest."""
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while True:
        doc = _agent_policy(netns)
        if doc is not None and (reloads is None or doc.get("reloads", 0) > reloads):
            if doc.get("error"):
                return Verdict(node, False, doc.get("file_digest"), str(doc["error"]))
            held = doc.get("file_digest")
            if held != expected:  # another `lab policy` won the race, or an edit
                return Verdict(node, False, held, f"it holds another policy ({held})")
            return Verdict(node, True, held, None)
        if time.monotonic() >= deadline:
            return Verdict(
                node,
                False,
                None,
                f"the agent did not report a reload within {RELOAD_TIMEOUT:g} s"
                + ("" if doc is not None else " (its admin endpoint does not answer)"),
            )
        time.sleep(0.05)
