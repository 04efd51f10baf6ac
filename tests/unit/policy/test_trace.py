"""The trace `smesh policy explain` prints: the decision is derived from it, each rule's
check says which part failed, and the canonical document and digest of a policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.identity.spiffe import SpiffeId
from smesh.policy import (
    DestinationWorkload,
    PolicyError,
    PolicyStore,
    decide,
    digest,
    document,
    from_document,
    parse,
    trace,
)
from smesh.policy.crd import PodLabels, translate
from smesh.policy.rules import Policy, Rule

POLICY = parse(
    """
rules:
  - name: no-pod1-to-pod3
    action: deny
    from: [{identity: "spiffe://cluster.local/ns/default/sa/pod-1"}]
    to: [{pod: pod-3}]
  - name: shop-to-payments
    action: allow
    from: [{namespace: shop}]
    to: [{namespace: payments}]
    ports: [8080, "9000-9010"]
  - name: shop-to-payments-too
    action: allow
    from: [{namespace: shop}]
    to: [{namespace: payments}]
"""
)
POD1 = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/pod-1")
WEB = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web")
POD3 = DestinationWorkload("default", "pod-3", "pod-3")
API = DestinationWorkload("payments", "api", "pod-4")


def whys(source: SpiffeId, dest: DestinationWorkload, port: int) -> dict[str, str]:
    return {r["rule"]: r["why"] for r in trace(POLICY, source, dest, port).explained()}


def test_each_rule_says_why_it_did_or_did_not_count() -> None:
    denied = whys(POD1, POD3, 8080)
    assert denied["no-pod1-to-pod3"] == "matches: deny wins, the connection is refused"
    assert denied["shop-to-payments"].startswith("does not target this workload: destination")
    assert "matches no `from` entry ({namespace: shop})" in denied["shop-to-payments"]

    allowed = whys(WEB, API, 8080)
    assert allowed["shop-to-payments"] == "matches: allowed, as no deny rule matches"
    assert allowed["shop-to-payments-too"].startswith("matches too (the allowance names")
    assert allowed["no-pod1-to-pod3"].startswith("does not match: destination pod pod-4")

    missed = whys(POD1, API, 8080)
    assert missed["shop-to-payments"].startswith("allow-lists this workload but does not")


def test_the_ports_that_missed_are_named() -> None:
    narrow = parse(
        "rules: [{name: a, action: allow, to: [{pod: pod-4}], ports: [8080, '9000-9010']}]"
    )
    found = trace(narrow, WEB, API, 22)
    assert not found.decision.allowed
    assert found.decision.decided_by == "(allow-list)"
    [rule] = found.explained()
    assert rule["why"].endswith("port 22 is not in `ports` (8080, 9000-9010)")
    assert (rule["destination"], rule["source"], rule["port"]) == (True, True, False)


def test_pending_refuses_without_looking_at_a_rule() -> None:
    found = trace(POLICY, WEB, API, 8080, pending="not read yet")
    assert not found.decision.allowed
    assert found.decision.decided_by == "(pending)"
    assert found.checks == ()


sources = st.sampled_from([POD1, WEB, SpiffeId.parse("spiffe://other.example/ns/x/sa/y")])
dests = st.sampled_from([POD3, API, DestinationWorkload("shop", "web", "pod-2")])
rules = st.builds(
    lambda i, action, source, to, ports: Rule.model_validate(
        {"name": f"r{i}", "action": action, "from": source, "to": to, "ports": ports}
    ),
    st.integers(0, 10**6),
    st.sampled_from(["allow", "deny"]),
    st.sampled_from([[], [{"namespace": "shop"}], [{"identity": str(POD1)}]]),
    st.sampled_from([[], [{"pod": "pod-3"}], [{"namespace": "payments"}]]),
    st.sampled_from([[], [8080], ["9000-9010"]]),
)


@given(
    st.lists(rules, max_size=5, unique_by=lambda r: r.name),
    st.sampled_from(["allow", "deny"]),
    sources,
    dests,
    st.sampled_from([8080, 9005, 22]),
)
def test_the_trace_names_what_decides_and_its_rule_matched(
    found_rules: list[Rule], default: str, source: SpiffeId, dest: DestinationWorkload, port: int
) -> None:
    policy = Policy.model_validate({"default": default, "rules": found_rules})
    found = trace(policy, source, dest, port)
    assert found.decision == decide(policy, source, dest, port)
    matched = {r["rule"]: r for r in found.explained() if r["matched"]}
    if found.decision.rule is not None:
        rule = matched[found.decision.rule]
        assert rule["action"] == ("allow" if found.decision.allowed else "deny")
    deny_matched = any(r["action"] == "deny" for r in matched.values())
    assert deny_matched == (not found.decision.allowed and found.decision.rule is not None)


def test_the_digest_is_of_the_content_not_the_spelling() -> None:
    one = parse("rules: [{name: a, action: allow, to: [{pod: p}], ports: [80, '81-82']}]")
    two = parse(
        "# the same rules\n"
        "rules:\n"
        "  - ports: ['80', 81-82]\n"
        "    to: [{pod: p}]\n"
        "    action: allow\n"
        "    name: a\n"
        "default: allow\n"
    )
    assert digest(one) == digest(two)
    assert digest(one).startswith("sha256:")
    assert len(digest(one)) == 7 + 64
    assert digest(one) != digest(parse("default: deny"))


def test_a_document_reads_back_as_the_policy_even_with_long_object_rule_names() -> None:
    name = "x" * 200
    objects = [
        {
            "metadata": {"name": name, "namespace": "shop", "uid": "u", "generation": 1},
            "spec": {"action": "DENY", "rules": [{"from": [{"namespace": "batch"}]}]},
        }
    ]
    combined = translate(objects, [PodLabels("shop", "db-0", {})], POLICY).policy
    assert len(combined.rules[-1].name) > 128  # longer than a file's rule name may be
    assert from_document(document(combined)) == combined
    assert from_document(document(POLICY)) == POLICY
    with pytest.raises(PolicyError, match="unique name"):
        from_document({"rules": [{"name": "a", "action": "deny"}] * 2})
    with pytest.raises(PolicyError, match=r"rules\[0\]\.action"):
        from_document({"rules": [{"name": "a", "action": "maybe"}]})


def test_the_store_keeps_when_it_loaded_and_the_last_refused_reload(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules: [{name: a, action: deny}]\n")
    store = PolicyStore(path)
    seen: list[bool] = []
    store.on_reload = seen.append
    first = store.describe()
    assert (first["reloads"], first["last_refused"], first["error"]) == (0, None, None)
    assert first["digest"] == first["file_digest"] == digest(store.policy)
    assert first["name"] == str(path)
    assert from_document(first["policy"]) == store.policy

    path.write_text("rules: [{name: a, action: perhaps}]\n")
    assert store.reload() is False
    refused = store.describe()
    assert refused["reloads"] == 1
    assert refused["digest"] == first["digest"]  # the old policy stays
    assert refused["loaded_at"] == first["loaded_at"]
    assert "rules[0].action" in refused["last_refused"]["error"]
    assert refused["error"] == refused["last_refused"]["error"]

    path.write_text("rules: [{name: b, action: allow}]\n")
    assert store.reload() is True
    loaded = store.describe()
    assert loaded["digest"] != first["digest"]
    assert loaded["loaded_at"] >= refused["last_refused"]["at"]
    assert loaded["error"] is None
    assert loaded["last_refused"] == refused["last_refused"]  # still shown, with its time
    assert seen == [False, True]


def test_the_objects_in_force_are_named() -> None:
    store = PolicyStore(None)
    store.objects = ("shop/db-from-web",)
    assert store.name == "AuthorizationPolicy shop/db-from-web"
    assert PolicyStore(None).name == "(none: default allow)"
