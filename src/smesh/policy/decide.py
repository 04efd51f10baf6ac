"""The authorization decision: a pure function of policy, source, destination and port.

1. A matching ``deny`` rule refuses, whatever else matches (deny wins).
2. If any ``allow`` rule targets the destination workload, the workload is allow-listed:
   the request needs a matching allow rule, or it is refused.
3. Otherwise the policy's default applies (``allow`` unless the file says otherwise).

:func:`trace` checks every rule and derives the decision from those checks; :func:`decide`
is its decision. ``smesh policy explain`` prints a trace, so what it says decides is what
the agent decides: there is no second evaluation to drift from the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from smesh.identity.spiffe import SpiffeId
from smesh.policy.rules import Destination, Policy, PortRange, Rule, Source


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


class RuleCheck(NamedTuple):
    """One rule against one request: which of its three parts hold. (A tuple: one is made
    per rule for every inbound tunnel, and a tuple is the cheapest to make.)"""

    rule: Rule
    targets: bool  # the destination is one of the rule's `to` (or it has none)
    source: bool  # the source is one of its `from` (or it has none)
    port: bool  # the port is in its `ports` (or it has none)

    @property
    def matched(self) -> bool:
        return self.targets and self.source and self.port


class Trace(NamedTuple):
    """A decision and every rule check it was derived from, in the policy's order."""

    decision: Decision
    checks: tuple[RuleCheck, ...]
    source: SpiffeId
    destination: DestinationWorkload
    port: int

    def explained(self) -> list[dict[str, Any]]:
        """Each rule: what it is, whether it matched, and why it did or did not count."""
        return [
            {
                "rule": c.rule.name,
                "action": c.rule.action,
                "matched": c.matched,
                "destination": c.targets,
                "source": c.source,
                "port": c.port,
                "why": self._why(c),
            }
            for c in self.checks
        ]

    def _why(self, check: RuleCheck) -> str:
        rule, decision = check.rule, self.decision
        misses = []
        if not check.targets:
            misses.append(
                f"destination {_workload(self.destination)} matches no `to` entry "
                f"({_any(rule.destinations)})"
            )
        if not check.source:
            misses.append(f"source {self.source} matches no `from` entry ({_any(rule.sources)})")
        if not check.port:
            misses.append(f"port {self.port} is not in `ports` ({_ports(rule.ports)})")
        if rule.action == "deny":
            if not check.matched:
                return "does not match: " + "; ".join(misses)
            if decision.rule == rule.name:
                return "matches: deny wins, the connection is refused"
            return f"matches too (the refusal names {decision.rule}, listed first)"
        if not check.targets:
            return "does not target this workload: " + "; ".join(misses)
        if not check.matched:
            return "allow-lists this workload but does not admit it: " + "; ".join(misses)
        if decision.rule == rule.name:
            return "matches: allowed, as no deny rule matches"
        if not decision.allowed:
            return f"matches, but deny rule {decision.rule} wins"
        return f"matches too (the allowance names {decision.rule}, listed first)"


def _workload(dest: DestinationWorkload) -> str:
    return f"pod {dest.pod} (namespace {dest.namespace}, serviceAccount {dest.service_account})"


def _any(items: tuple[Source, ...] | tuple[Destination, ...]) -> str:
    shown = [
        ", ".join(f"{k}: {v}" for k, v in item.model_dump(by_alias=True, exclude_none=True).items())
        for item in items
    ]
    return "; ".join(f"{{{s}}}" for s in shown)


def _ports(ports: tuple[PortRange, ...]) -> str:
    return ", ".join(str(p.first) if p.first == p.last else f"{p.first}-{p.last}" for p in ports)


def _targets(destinations: tuple[Destination, ...], dest: DestinationWorkload) -> bool:
    if not destinations:
        return True
    return any(
        (d.namespace is None or d.namespace == dest.namespace)
        and (d.service_account is None or d.service_account == dest.service_account)
        and (d.pod is None or d.pod == dest.pod)
        for d in destinations
    )


def _check(rule: Rule, source: SpiffeId, dest: DestinationWorkload, port: int) -> RuleCheck:
    return RuleCheck(
        rule,
        _targets(rule.destinations, dest),
        not rule.sources or any(s.matches(source) for s in rule.sources),
        not rule.ports or any(port in r for r in rule.ports),
    )


def trace(
    policy: Policy,
    source: SpiffeId,
    dest: DestinationWorkload,
    port: int,
    *,
    pending: str | None = None,
) -> Trace:
    """Check every rule, then decide from the checks. *pending* (why no policy is in force
    yet, e.g. AuthorizationPolicies not read) refuses before any rule is looked at."""
    if pending is not None:
        return Trace(Decision(False, None, pending, "pending"), (), source, dest, port)
    checks = tuple(_check(rule, source, dest, port) for rule in policy.rules)
    return Trace(_verdict(checks, policy.default), checks, source, dest, port)


def _verdict(checks: tuple[RuleCheck, ...], default: str) -> Decision:
    allow_listed = False
    allowed_by: str | None = None
    for check in checks:
        if check.rule.action == "deny":
            if check.matched:
                return Decision(False, check.rule.name, f"denied by rule {check.rule.name}")
        elif check.targets:
            allow_listed = True
            if allowed_by is None and check.matched:
                allowed_by = check.rule.name
    if allowed_by is not None:
        return Decision(True, allowed_by, f"allowed by rule {allowed_by}")
    if allow_listed:
        return Decision(
            False, None, "no allow rule for this workload admits the source and port", "allow-list"
        )
    if default == "allow":
        return Decision(True, None, "allowed by default")
    return Decision(False, None, "denied by default")


def decide(policy: Policy, source: SpiffeId, dest: DestinationWorkload, port: int) -> Decision:
    return trace(policy, source, dest, port).decision
