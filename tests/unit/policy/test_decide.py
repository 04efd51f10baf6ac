"""Authorization decisions: a table of cases, and properties that hold for any policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.identity.spiffe import SpiffeId
from smesh.policy import DestinationWorkload, Policy, decide, parse
from smesh.policy.rules import PolicyError

POLICY = parse(
    """
rules:
  - name: deny-batch
    action: deny
    from: [{namespace: batch}]
  - name: deny-pod2-to-db-admin
    action: deny
    from: [{identity: "spiffe://cluster.local/ns/default/sa/pod-2"}]
    to: [{serviceAccount: db}]
    ports: [9000]
  - name: db-clients
    action: allow
    from: [{namespace: default}, {trustDomain: partner.example}]
    to: [{namespace: default, serviceAccount: db}]
    ports: [5432, "9000-9010"]
"""
)

DB = DestinationWorkload("default", "db", "pod-3")
WEB = DestinationWorkload("default", "web", "pod-4")


def sid(text: str) -> SpiffeId:
    return SpiffeId.parse(text)


@pytest.mark.parametrize(
    ("source", "dest", "port", "allowed", "rule"),
    [
        # an allow-listed destination admits matching sources on listed ports
        ("spiffe://cluster.local/ns/default/sa/pod-1", DB, 5432, True, "db-clients"),
        ("spiffe://partner.example/ns/x/sa/y", DB, 9005, True, "db-clients"),
        # ... and refuses everyone else, or other ports
        ("spiffe://cluster.local/ns/shop/sa/api", DB, 5432, False, None),
        ("spiffe://cluster.local/ns/default/sa/pod-1", DB, 22, False, None),
        # deny wins over a matching allow
        ("spiffe://cluster.local/ns/default/sa/pod-2", DB, 9000, False, "deny-pod2-to-db-admin"),
        ("spiffe://cluster.local/ns/default/sa/pod-2", DB, 5432, True, "db-clients"),
        ("spiffe://cluster.local/ns/batch/sa/job", DB, 5432, False, "deny-batch"),
        ("spiffe://cluster.local/ns/batch/sa/job", WEB, 80, False, "deny-batch"),
        # a workload no allow rule targets follows the default (allow)
        ("spiffe://cluster.local/ns/shop/sa/api", WEB, 80, True, None),
        ("spiffe://other.example/ns/shop/sa/api", WEB, 443, True, None),
    ],
)
def test_decision_table(
    source: str, dest: DestinationWorkload, port: int, allowed: bool, rule: str | None
) -> None:
    decision = decide(POLICY, sid(source), dest, port)
    assert (decision.allowed, decision.rule) == (allowed, rule)
    assert decision.reason


def test_empty_policy_allows_within_the_mesh_and_default_deny_refuses() -> None:
    assert decide(Policy(), sid("spiffe://td/ns/a/sa/b"), WEB, 1).allowed
    denied = decide(parse("default: deny"), sid("spiffe://td/ns/a/sa/b"), WEB, 1)
    assert not denied.allowed
    assert denied.reason == "denied by default"


def test_what_decided_is_named_for_the_metric_even_without_a_rule() -> None:
    """smesh_policy_denials_total{rule}: a default deny and an allow-list miss differ, and
    no rule can take either label."""
    pod1 = sid("spiffe://cluster.local/ns/default/sa/pod-1")
    assert decide(POLICY, pod1, DB, 22).decided_by == "(allow-list)"
    assert decide(parse("default: deny"), pod1, WEB, 1).decided_by == "(default)"
    assert decide(POLICY, sid("spiffe://cluster.local/ns/batch/sa/j"), WEB, 80).decided_by == (
        "deny-batch"
    )
    with pytest.raises(PolicyError, match=r"rules\[0\]\.name"):
        parse("rules: [{name: (default), action: deny}]")


# -- properties ---------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c"])
ids = st.builds(SpiffeId, st.sampled_from(["td", "other"]), names, names)
dests = st.builds(DestinationWorkload, names, names, st.sampled_from(["pod-1", "pod-2"]))
ports = st.integers(1, 20)


@st.composite
def rules(draw: st.DrawFn, action: str | None = None) -> dict[str, object]:
    rule: dict[str, object] = {"action": action or draw(st.sampled_from(["allow", "deny"]))}
    if draw(st.booleans()):
        rule["from"] = [
            draw(
                st.one_of(
                    st.builds(lambda s: {"identity": str(s)}, ids),
                    st.builds(lambda n: {"namespace": n}, names),
                    st.builds(lambda t: {"trustDomain": t}, st.sampled_from(["td", "other"])),
                )
            )
        ]
    if draw(st.booleans()):
        rule["to"] = [{"serviceAccount": draw(names)}]
    if draw(st.booleans()):
        low = draw(ports)
        rule["ports"] = [f"{low}-{draw(st.integers(low, 20))}"]
    return rule


def policy_of(rule_list: list[dict[str, object]], default: str = "allow") -> Policy:
    named = [dict(r, name=f"r{i}") for i, r in enumerate(rule_list)]
    return Policy.model_validate({"default": default, "rules": named})


@given(st.lists(rules(), max_size=5), rules(action="deny"), ids, dests, ports)
def test_deny_wins(
    rule_list: list[dict[str, object]],
    deny: dict[str, object],
    s: SpiffeId,
    d: DestinationWorkload,
    p: int,
) -> None:
    policy = policy_of([*rule_list, deny])
    if decide(policy_of([deny]), s, d, p).allowed is False:  # the deny rule matches
        assert not decide(policy, s, d, p).allowed


@given(st.lists(rules(action="deny"), max_size=4), ids, dests, ports)
def test_without_allow_rules_only_denies_refuse(
    rule_list: list[dict[str, object]], s: SpiffeId, d: DestinationWorkload, p: int
) -> None:
    decision = decide(policy_of(rule_list), s, d, p)
    assert decision.allowed or (decision.rule is not None and decision.rule.startswith("r"))


@given(st.lists(rules(), max_size=5), ids, dests, ports)
def test_adding_a_deny_rule_never_turns_a_deny_into_an_allow(
    rule_list: list[dict[str, object]], s: SpiffeId, d: DestinationWorkload, p: int
) -> None:
    before = decide(policy_of(rule_list), s, d, p)
    after = decide(policy_of([*rule_list, {"action": "deny", "to": [{"pod": "pod-9"}]}]), s, d, p)
    assert after.allowed <= before.allowed


@given(st.lists(rules(), max_size=5), ids, dests, ports)
def test_rule_order_does_not_change_the_outcome(
    rule_list: list[dict[str, object]], s: SpiffeId, d: DestinationWorkload, p: int
) -> None:
    forward = decide(policy_of(rule_list), s, d, p).allowed
    assert decide(policy_of(list(reversed(rule_list))), s, d, p).allowed == forward
