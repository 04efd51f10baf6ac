"""`smesh policy check FILE` and `smesh policy explain --from ID --to POD:PORT`.

``explain`` decides with the agent's own function (:func:`smesh.policy.decide.trace`) on
the agent's own inputs: the policy it holds, as its ``/debug/policy`` serves it (the
document's digest is checked against the agent's, so what is explained is what was
loaded), its trust domain, and the destination pod's workload as the lab published it.
The agent hosting the pod is asked, since with AuthorizationPolicy objects each node's
policy is its own (selectors are resolved against the node's pods). ``--policy FILE``
asks the same question of a file instead, without an agent.

``policy check -o json`` answers an invalid policy with a document too (``valid: false``
and the error, exit 1), so a script or CI step reads one format whatever the file holds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from smesh.cli.agents import Agent, AgentUnanswered, fetch, lab_agents
from smesh.cli.options import add_lab
from smesh.cli.output import add_output, show, wants_json
from smesh.errors import SmeshError
from smesh.lab import api as lab_api
from smesh.lab.errors import UnknownMember
from smesh.policy import (
    DestinationWorkload,
    Policy,
    PolicyError,
    digest,
    from_document,
    load,
    trace,
)
from smesh.policy.explain import ExplainError, explanation, render, source_identity, target

DEFAULT_TRUST_DOMAIN = "cluster.local"


def configure(policy: argparse.ArgumentParser) -> None:
    verbs = policy.add_subparsers(dest="verb", metavar="VERB", required=True)
    check = verbs.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path)
    add_output(check)
    check.set_defaults(func=_check)

    explain = verbs.add_parser(
        "explain",
        help="which rule decides a connection and why, without sending traffic",
        description="Which rule of the policy in force decides a connection from IDENTITY "
        "to POD:PORT, and why each rule did or did not match. Asks the agent hosting POD "
        "for the policy it holds, or decides with --policy FILE.",
    )
    explain.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="IDENTITY",
        help="the caller: a SPIFFE ID, or NAMESPACE/SERVICEACCOUNT (in the agent's trust "
        "domain; cluster.local with --policy and no lab)",
    )
    explain.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="POD:PORT",
        help="the destination: a lab pod (pod-3:8080; NAMESPACE/POD in a Kubernetes lab), "
        "or NAMESPACE/SERVICEACCOUNT/POD:PORT with --policy (no lab needed)",
    )
    add_lab(explain)  # the lab whose pod and agent to ask
    explain.add_argument(
        "--policy", type=Path, metavar="FILE", help="decide with this file, not the agent's"
    )
    add_output(explain)
    explain.set_defaults(func=_explain)


def _check(args: argparse.Namespace) -> int:
    try:
        policy = load(args.file)
    except PolicyError as exc:
        if not wants_json(args):
            raise
        show(args, {"file": str(args.file), "valid": False, "error": str(exc)})
        print(f"smesh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    allow = sum(r.action == "allow" for r in policy.rules)
    show(
        args,
        {
            "file": str(args.file),
            "valid": True,
            "rules": len(policy.rules),
            "allow": allow,
            "deny": len(policy.rules) - allow,
            "default": policy.default,
        },
        f"{args.file}: valid — {len(policy.rules)} rules ({allow} allow, "
        f"{len(policy.rules) - allow} deny), default {policy.default}",
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    pod, port = target(args.target)
    parts = pod.split("/")
    agent: Agent | None = None
    if len(parts) == 3:  # a whole workload: no lab
        if args.policy is None:
            raise ExplainError(
                f"--to {args.target!r} names no lab pod, so no agent holds its policy: "
                "give --policy FILE, or a lab pod (pod-3:8080)"
            )
        dest = DestinationWorkload(parts[0], parts[1], parts[2])
    else:
        lab = args.lab
        dest, node = _lab_pod(lab, pod)
        if args.policy is None or dest.service_account == "":
            agent = _agent(lab, node)
        if dest.service_account == "":  # a Kubernetes pod: the agent's registry says
            assert agent is not None
            dest = _registry_workload(agent, pod)
    if args.policy is not None:
        policy = load(args.policy)
        held = {"from": "file", "name": str(args.policy), "digest": digest(policy)}
        pending, trust_domain = None, DEFAULT_TRUST_DOMAIN
    else:
        assert agent is not None
        policy, held, pending, trust_domain = _agent_policy(agent)
    found = trace(policy, source_identity(args.source, trust_domain), dest, port, pending=pending)
    doc = explanation(found, held)
    print(json.dumps(doc, indent=2) if wants_json(args) else render(doc))
    return 0


def _lab_pod(lab: str, pod: str) -> tuple[DestinationWorkload, str]:
    """*pod*'s workload (its service account left empty for a Kubernetes pod, which the
    agent's registry gives) and its node."""
    doc = lab_api.status(lab)
    if doc.get("kubernetes"):
        namespace, _, name = pod.rpartition("/")
        namespace = namespace or "default"
        for row in doc["kubernetes_pods"]:
            if (row["namespace"], row["name"]) == (namespace, name) and row["node"]:
                return DestinationWorkload(namespace, "", name), str(row["node"])
        raise UnknownMember(
            f"lab {lab!r} has no pod {namespace}/{name} on a node (`smesh lab status --lab "
            f"{lab}` lists them)"
        )
    for row in doc["pods"]:
        if pod in (row["name"], f"{row['namespace']}/{row['name']}"):
            workload = DestinationWorkload(row["namespace"], row["service_account"], row["name"])
            return workload, str(row["node"])
    names = ", ".join(str(row["name"]) for row in doc["pods"])
    raise UnknownMember(f"lab {lab!r} has no pod {pod!r} (pods: {names})")


def _agent(lab: str, node: str) -> Agent:
    [agent] = lab_agents(argparse.Namespace(lab=lab, node=node, admin=None))
    return agent


def _asked(agent: Agent, path: str) -> dict[str, Any]:
    try:
        return fetch(agent, path)
    except AgentUnanswered as exc:
        raise SmeshError(f"{agent.label}'s agent: {exc}; fix: {agent.fix}") from None


def _registry_workload(agent: Agent, pod: str) -> DestinationWorkload:
    namespace, _, name = pod.rpartition("/")
    key = f"{namespace or 'default'}/{name}"
    for entry in _asked(agent, "/debug/workloads").get("registry", []):
        if entry.get("pod") == key:
            return DestinationWorkload(key.partition("/")[0], str(entry["serviceAccount"]), name)
    raise UnknownMember(f"the agent of {agent.label} does not know pod {key} (not meshed yet?)")


def _agent_policy(agent: Agent) -> tuple[Policy, dict[str, Any], str | None, str]:
    """The policy *agent* holds, checked against the digest it reports."""
    doc = _asked(agent, "/debug/policy")
    policy = from_document(doc["policy"], f"{agent.label}'s /debug/policy")
    if digest(policy) != doc["digest"]:
        raise SmeshError(
            f"the policy {agent.label}'s agent serves does not have the digest it reports "
            f"({doc['digest']}): is this smesh the agent's version?"
        )
    held = {"from": f"agent of {agent.label}", "name": doc["name"], "digest": doc["digest"]}
    return policy, held, doc.get("pending"), str(doc["trust_domain"])


# -- `smesh status`'s policy lines ----------------------------------------------------------


def held_policies(agents: list[Agent]) -> dict[str, dict[str, Any]]:
    """Each answering agent's ``/debug/policy`` (an agent without the route is left out)."""
    found: dict[str, dict[str, Any]] = {}
    for agent in agents:
        if agent.error is not None:
            continue
        try:
            doc = fetch(agent, "/debug/policy")
        except AgentUnanswered:
            continue
        doc.pop("policy", None)  # the rules themselves: `policy explain` shows them
        found[agent.label] = doc
    return found


def _when(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M:%S}Z"


def policy_lines(label: str, doc: dict[str, Any]) -> list[str]:
    """The policy an agent holds, in one line, and its last refused reload in another."""
    held = (
        f"{label}: {doc['name']} {doc['digest'][:19]}, {doc['rules']} "
        f"rule{'' if doc['rules'] == 1 else 's'}, "
        f"default {doc['default']}, loaded {_when(doc['loaded_at'])}"
    )
    if doc.get("pending"):
        held = f"{label}: PENDING ({doc['pending']}): every inbound connection is refused"
    lines = [held]
    refused = doc.get("last_refused")
    if refused:
        still = (
            " (the policy above stays in force)"
            if doc.get("error")
            else " (a later reload succeeded)"
        )
        lines.append(
            f"{' ' * len(label)}  last refused reload {_when(refused['at'])}: "
            f"{refused['error']}{still}"
        )
    return lines
