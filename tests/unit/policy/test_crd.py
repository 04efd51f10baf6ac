"""AuthorizationPolicy objects → the policy the agent decides with: selectors, namespaces,
precedence, combination with the policy file, and objects that cannot be used."""

from __future__ import annotations

from typing import Any

import pytest

from smesh.identity.spiffe import SpiffeId
from smesh.policy import DestinationWorkload, decide, parse
from smesh.policy.crd import PodLabels, Selector, translate

FRONTEND = SpiffeId.parse("spiffe://cluster.local/ns/frontend/sa/web")
BATCH = SpiffeId.parse("spiffe://cluster.local/ns/batch/sa/worker")
PARTNER = SpiffeId.parse("spiffe://partner.example/ns/x/sa/y")

PODS = [
    PodLabels("shop", "db-0", {"app": "db", "tier": "data"}),
    PodLabels("shop", "web-0", {"app": "web"}),
    PodLabels("other", "db-0", {"app": "db"}),
]
DB = DestinationWorkload("shop", "db", "db-0")
WEB = DestinationWorkload("shop", "web", "web-0")
OTHER_DB = DestinationWorkload("other", "db", "db-0")


def obj(
    name: str, namespace: str, spec: dict[str, Any], generation: int = 1, uid: str = ""
) -> dict[str, Any]:
    return {
        "apiVersion": "smesh.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or f"uid-{name}",
            "generation": generation,
        },
        "spec": spec,
    }


def allow_db_from(namespace: str, ns: str = "shop", **extra: Any) -> dict[str, Any]:
    return obj(
        f"db-from-{namespace}",
        ns,
        {
            "action": "ALLOW",
            "selector": {"matchLabels": {"app": "db"}},
            "rules": [{"from": [{"namespace": namespace}], "to": {"ports": [{"port": 5432}]}}],
            **extra,
        },
    )


def deny_batch(ns: str = "shop", selector: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": "DENY", "rules": [{"from": [{"namespace": "batch"}]}]}
    if selector is not None:
        spec["selector"] = selector
    return obj("no-batch", ns, spec)


def allowed(
    objects: list[dict[str, Any]], source: SpiffeId, dest: DestinationWorkload, port: int
) -> bool:
    return decide(translate(objects, PODS).policy, source, dest, port).allowed


def test_no_objects_is_the_file_policy_or_allow() -> None:
    assert allowed([], BATCH, DB, 5432)
    strict = parse("default: deny")
    assert not decide(translate([], PODS, strict).policy, BATCH, DB, 5432).allowed


def test_an_allow_policy_allow_lists_the_selected_pods_only() -> None:
    objects = [allow_db_from("frontend")]
    assert allowed(objects, FRONTEND, DB, 5432)
    assert not allowed(objects, FRONTEND, DB, 5433)  # port
    assert not allowed(objects, BATCH, DB, 5432)  # source
    assert allowed(objects, BATCH, WEB, 8080)  # not selected: the default
    assert allowed(objects, BATCH, OTHER_DB, 5432)  # same labels, another namespace


def test_deny_wins_over_allow_whatever_the_order() -> None:
    allow_batch = allow_db_from("batch")
    for objects in ([allow_batch, deny_batch()], [deny_batch(), allow_batch]):
        decision = decide(translate(objects, PODS).policy, BATCH, DB, 5432)
        assert not decision.allowed
        assert decision.decided_by == "shop/no-batch#0"


def test_a_policy_without_selector_covers_its_namespace_only() -> None:
    objects = [deny_batch()]
    assert not allowed(objects, BATCH, DB, 1)
    assert not allowed(objects, BATCH, WEB, 1)
    # A pod of the namespace this node does not run (yet) is covered too.
    assert not allowed(objects, BATCH, DestinationWorkload("shop", "x", "new-pod"), 1)
    assert allowed(objects, BATCH, OTHER_DB, 1)


def test_a_policy_in_smesh_system_is_mesh_wide() -> None:
    assert not allowed([deny_batch("smesh-system")], BATCH, OTHER_DB, 1)
    assert not allowed([deny_batch("smesh-system")], BATCH, WEB, 1)
    selective = [deny_batch("smesh-system", {"matchLabels": {"app": "db"}})]
    assert not allowed(selective, BATCH, DB, 1)
    assert not allowed(selective, BATCH, OTHER_DB, 1)
    assert allowed(selective, BATCH, WEB, 1)


def test_a_selector_that_picks_no_pod_of_this_node_targets_nothing() -> None:
    # Not "every workload", which is what a rule without destinations means.
    objects = [deny_batch(selector={"matchLabels": {"app": "cache"}})]
    translation = translate(objects, PODS)
    assert translation.policy.rules == ()
    assert translation.outcomes[0].applied
    assert allowed(objects, BATCH, DB, 1)


def test_rules_of_one_object_are_alternatives_and_sources_and_ports_are_conjoined() -> None:
    spec = {
        "action": "ALLOW",
        "rules": [
            {"from": [{"identity": str(FRONTEND)}], "to": {"ports": [{"port": 80}]}},
            {"from": [{"trustDomain": "partner.example"}]},
            {"to": {"ports": [{"port": 9000, "endPort": 9010}]}},
        ],
    }
    objects = [obj("mixed", "shop", spec)]
    assert allowed(objects, FRONTEND, WEB, 80)
    assert not allowed(objects, FRONTEND, WEB, 81)
    assert allowed(objects, PARTNER, WEB, 81)
    assert allowed(objects, BATCH, WEB, 9010)
    assert not allowed(objects, BATCH, WEB, 9011)
    names = [r.name for r in translate(objects, PODS).policy.rules]
    assert names == ["shop/mixed#0", "shop/mixed#1", "shop/mixed#2"]


@pytest.mark.parametrize(
    ("selector", "picked"),
    [
        ({}, {"db-0", "web-0"}),
        ({"matchLabels": {"app": "db", "tier": "data"}}, {"db-0"}),
        (
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "x"]}]},
            {"web-0"},
        ),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, {"db-0"}),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"db-0"}),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"web-0"}),
        (
            {
                "matchLabels": {"app": "db"},
                "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}],
            },
            set(),
        ),
    ],
)
def test_label_selectors(selector: dict[str, Any], picked: set[str]) -> None:
    parsed = Selector.model_validate(selector)
    assert {p.name for p in PODS if p.namespace == "shop" and parsed.matches(p.labels)} == picked


def test_policy_file_rules_and_default_combine_with_objects() -> None:
    base = parse(
        """
default: deny
rules:
  - name: frontend-anywhere
    action: allow
    from: [{namespace: frontend}]
"""
    )
    translation = translate([deny_batch()], PODS, base)
    assert decide(translation.policy, FRONTEND, WEB, 1).allowed
    assert not decide(translation.policy, PARTNER, WEB, 1).allowed  # the file's default
    assert decide(translation.policy, BATCH, WEB, 1).decided_by == "shop/no-batch#0"


def test_an_object_that_does_not_validate_is_not_applied_and_says_why() -> None:
    bad = obj(
        "bad",
        "shop",
        {"action": "DENY", "rules": [{"to": {"ports": [{"port": 90, "endPort": 80}]}}]},
        generation=3,
    )
    translation = translate([bad, deny_batch()], PODS)
    by_name = {o.name: o for o in translation.outcomes}
    assert not by_name["bad"].applied
    assert by_name["bad"].generation == 3
    assert by_name["bad"].message.startswith("not applied: spec.rules[0].to.ports[0]")
    assert "endPort must not be below port" in by_name["bad"].message
    assert by_name["no-batch"].applied
    assert [r.name for r in translation.policy.rules] == ["shop/no-batch#0"]


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        (None, "spec"),
        ({"action": "AUDIT", "rules": [{"from": [{"namespace": "a"}]}]}, "spec.action"),
        ({"action": "DENY", "rules": [{}]}, "spec.rules[0]"),
        ({"action": "DENY", "rules": []}, "spec.rules"),
        (
            {"action": "DENY", "rules": [{"from": [{"identity": "spiffe://x/ns/../sa/b"}]}]},
            "spec.rules[0].from[0]",
        ),
        (
            {"action": "DENY", "rules": [{"from": [{"namespace": "a"}], "audit": True}]},
            "spec.rules[0].audit",
        ),
    ],
)
def test_unusable_specs_name_the_field(spec: Any, where: str) -> None:
    (outcome,) = translate([obj("bad", "shop", spec)], PODS).outcomes
    assert not outcome.applied
    assert outcome.message.startswith(f"not applied: {where}"), outcome.message


def test_a_rule_name_the_policy_file_already_uses_is_not_applied() -> None:
    base = parse(
        """
rules:
  - name: "shop/no-batch#0"
    action: allow
    from: [{namespace: batch}]
"""
    )
    (outcome,) = translate([deny_batch()], PODS, base).outcomes
    assert not outcome.applied
    assert "shop/no-batch#0" in outcome.message


def test_the_store_combines_its_file_with_the_overlay_on_every_reload(tmp_path: Any) -> None:
    from smesh.policy.rules import PolicyStore  # noqa: PLC0415

    path = tmp_path / "policy.yaml"
    path.write_text("default: allow\n")
    store = PolicyStore(path, pending="waiting")
    assert store.pending == "waiting"
    store.overlay(lambda base: translate([deny_batch()], PODS, base).policy)
    assert store.pending is None
    assert not decide(store.policy, BATCH, DB, 1).allowed
    assert decide(store.policy, PARTNER, DB, 1).allowed
    path.write_text("default: deny\n")
    assert store.reload()  # SIGHUP: the new file, the objects still added
    assert not decide(store.policy, PARTNER, DB, 1).allowed
    assert decide(store.policy, BATCH, DB, 1).decided_by == "shop/no-batch#0"
    path.write_text("rules: [")
    assert not store.reload()  # a bad file keeps both
    assert decide(store.policy, BATCH, DB, 1).decided_by == "shop/no-batch#0"
