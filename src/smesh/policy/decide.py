"""The authorization decision: a pure function of policy, source, destination and port.

1. A matching ``deny`` rule refuses, whatever else matches (deny wins).
2. If any ``allow`` rule targets the destination workload, the workload is allow-listed:
   the request needs a matching allow rule, or it is refused.
3. Otherwise the policy's default applies (``allow`` unless the file says otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

from smesh.identity.spiffe import SpiffeId
from smesh.policy.rules import Destination, Policy, Rule


@dataclass(frozen=True)
class DestinationWorkload:
    namespace: str
    service_account: str
    pod: str


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: str | None  # the rule that decided, None for the default or an allow-list miss
    reason: str
    fallback: str = "default"  # what decided when no rule did: "allow-list" or "default"

    @property
    def decided_by(self) -> str:
        """The rule's name, or "(allow-list)" / "(default)" (no rule may be so named)."""
        return self.rule if self.rule is not None else f"({self.fallback})"


def _targets(destinations: tuple[Destination, ...], dest: DestinationWorkload) -> bool:
    if not destinations:
        return True
    return any(
        (d.namespace is None or d.namespace == dest.namespace)
        and (d.service_account is None or d.service_account == dest.service_account)
        and (d.pod is None or d.pod == dest.pod)
        for d in destinations
    )


def _matches(rule: Rule, source: SpiffeId, dest: DestinationWorkload, port: int) -> bool:
    return (
        _targets(rule.destinations, dest)
        and (not rule.sources or any(s.matches(source) for s in rule.sources))
        and (not rule.ports or any(port in r for r in rule.ports))
    )


def decide(policy: Policy, source: SpiffeId, dest: DestinationWorkload, port: int) -> Decision:
    allow_listed = False
    allowed_by: str | None = None
    for rule in policy.rules:
        if rule.action == "deny":
            if _matches(rule, source, dest, port):
                return Decision(False, rule.name, f"denied by rule {rule.name}")
        elif _targets(rule.destinations, dest):
            allow_listed = True
            if allowed_by is None and _matches(rule, source, dest, port):
                allowed_by = rule.name
    if allowed_by is not None:
        return Decision(True, allowed_by, f"allowed by rule {allowed_by}")
    if allow_listed:
        return Decision(
            False, None, "no allow rule for this workload admits the source and port", "allow-list"
        )
    if policy.default == "allow":
        return Decision(True, None, "allowed by default")
    return Decision(False, None, "denied by default")
