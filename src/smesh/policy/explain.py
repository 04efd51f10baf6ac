"""``smesh policy explain``'s pure parts: its arguments, and a trace as a document or text.

The decision itself is :func:`smesh.policy.decide.trace`, the function the agent
authorizes with; this module only reads the question and words the answer.
"""

from __future__ import annotations

from typing import Any

from smesh.identity.errors import InvalidSpiffeId
from smesh.identity.spiffe import SpiffeId
from smesh.policy.decide import Trace
from smesh.policy.rules import PolicyError


class ExplainError(PolicyError):
    """The question is malformed: the message names the flag and the form it takes."""


def source_identity(text: str, trust_domain: str) -> SpiffeId:
    """``--from``: a SPIFFE ID, or ``NAMESPACE/SERVICEACCOUNT`` of *trust_domain*."""
    try:
        if text.startswith("spiffe://"):
            return SpiffeId.parse(text)
        namespace, slash, account = text.partition("/")
        if not slash or not namespace or not account or "/" in account:
            raise ExplainError(
                f"--from {text!r}: give a SPIFFE ID (spiffe://TD/ns/NS/sa/SA) or "
                "NAMESPACE/SERVICEACCOUNT"
            )
        return SpiffeId(trust_domain, namespace, account)
    except InvalidSpiffeId as exc:
        raise ExplainError(f"--from {text!r}: {exc}") from None


def target(text: str) -> tuple[str, int]:
    """``--to POD:PORT`` → (POD, PORT); POD is a lab pod (``pod-3``, ``NS/POD``) or a whole
    workload ``NAMESPACE/SERVICEACCOUNT/POD``."""
    pod, colon, port = text.rpartition(":")
    if not colon or not pod or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ExplainError(f"--to {text!r}: expected POD:PORT with a port 1-65535 (pod-3:8080)")
    if pod.count("/") > 2 or any(not part for part in pod.split("/")):
        raise ExplainError(
            f"--to {text!r}: POD is a pod name, NAMESPACE/POD, or NAMESPACE/SERVICEACCOUNT/POD"
        )
    return pod, int(port)


def explanation(found: Trace, policy: dict[str, Any]) -> dict[str, Any]:
    """The ``-o json`` document: the decision, what decided it, the question, the policy
    it was asked of (*policy*: where it came from, its name and digest), and every rule."""
    decision, dest = found.decision, found.destination
    return {
        "decision": "allow" if decision.allowed else "deny",
        "allowed": decision.allowed,
        "decided_by": decision.decided_by,
        "rule": decision.rule,
        "fallback": None if decision.rule is not None else decision.fallback,
        "reason": decision.reason,
        "source": str(found.source),
        "destination": {
            "pod": dest.pod,
            "namespace": dest.namespace,
            "service_account": dest.service_account,
            "port": found.port,
        },
        "policy": policy,
        "rules": found.explained(),
    }


def render(doc: dict[str, Any]) -> str:
    """The text form of :func:`explanation`."""
    dest, policy = doc["destination"], doc["policy"]
    decided = doc["rule"] if doc["rule"] is not None else f"no rule: {doc['fallback']}"
    lines = [
        f"{doc['decision'].upper()}: {doc['reason']} (decided by {decided})",
        f"  from  {doc['source']}",
        f"  to    pod {dest['pod']} (namespace {dest['namespace']}, serviceAccount "
        f"{dest['service_account']}) port {dest['port']}",
        f"  policy {policy['name']} {policy['digest'][:19]} ({policy['from']})",
    ]
    rules = doc["rules"]
    if doc["fallback"] == "pending":
        lines.append("no rule was looked at: the agent decides nothing until its policy is read")
    elif not rules:
        lines.append("the policy has no rules")
    else:
        lines.append(f"rules considered ({len(rules)}):")
        for rule in rules:
            mark = "match" if rule["matched"] else "no   "
            lines.append(f"  {mark} {rule['action']:5} {rule['rule']}: {rule['why']}")
    return "\n".join(lines)
