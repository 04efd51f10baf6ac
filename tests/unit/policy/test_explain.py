"""`smesh policy explain`: its arguments, its answer, and the agent's /debug/policy that the
answer is computed from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smesh.agent.config import AgentConfig
from smesh.agent.node import Agent
from smesh.agent.wiring import MeshWiring
from smesh.cli import main
from smesh.identity.spiffe import SpiffeId
from smesh.policy import DestinationWorkload, digest, from_document, parse, trace
from smesh.policy.explain import ExplainError, explanation, render, source_identity, target

POLICY = """
default: deny
rules:
  - name: no-batch
    action: deny
    from: [{namespace: batch}]
  - name: web-to-db
    action: allow
    from: [{identity: "spiffe://cluster.local/ns/shop/sa/web"}]
    to: [{serviceAccount: db}]
    ports: [5432]
"""


def test_from_takes_a_spiffe_id_or_namespace_slash_serviceaccount() -> None:
    assert source_identity("shop/web", "td.example") == SpiffeId("td.example", "shop", "web")
    assert source_identity("spiffe://a.example/ns/b/sa/c", "td") == SpiffeId("a.example", "b", "c")
    for bad in ("web", "shop/", "/web", "a/b/c", "a b/c", "spiffe://td/ns/a"):
        with pytest.raises(ExplainError, match=f"--from {bad!r}"):
            source_identity(bad, "cluster.local")


def test_to_takes_pod_colon_port() -> None:
    assert target("pod-3:8080") == ("pod-3", 8080)
    assert target("shop/db-0:5432") == ("shop/db-0", 5432)
    assert target("shop/db/db-0:5432") == ("shop/db/db-0", 5432)
    for bad in ("pod-3", "pod-3:", "pod-3:0", "pod-3:70000", ":80", "a/b/c/d:1", "a//b:1"):
        with pytest.raises(ExplainError, match="--to"):
            target(bad)


def test_the_answer_names_the_decision_the_rule_and_every_rule_considered() -> None:
    policy = parse(POLICY)
    found = trace(
        policy,
        SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/web"),
        DestinationWorkload("shop", "db", "db-0"),
        5432,
    )
    held = {"from": "file", "name": "p.yaml", "digest": digest(policy)}
    doc = explanation(found, held)
    assert (doc["decision"], doc["decided_by"], doc["fallback"]) == ("allow", "web-to-db", None)
    assert [r["rule"] for r in doc["rules"]] == ["no-batch", "web-to-db"]
    assert [r["matched"] for r in doc["rules"]] == [False, True]
    text = render(doc)
    assert text.startswith("ALLOW: allowed by rule web-to-db (decided by web-to-db)")
    assert f"policy p.yaml {digest(policy)[:19]} (file)" in text
    assert "  match allow web-to-db: matches: allowed, as no deny rule matches" in text


def test_explain_with_a_file_needs_no_lab(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    base = ["policy", "explain", "--policy", str(path), "-o", "json"]
    assert main([*base, "--from", "batch/job", "--to", "shop/db/db-0:5432"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["decision"], doc["rule"]) == ("deny", "no-batch")
    assert doc["source"] == "spiffe://cluster.local/ns/batch/sa/job"
    assert main([*base, "--from", "shop/api", "--to", "shop/web/web-0:80"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["decision"], doc["decided_by"], doc["reason"]) == (
        "deny",
        "(default)",
        "denied by default",
    )


def test_explain_without_a_policy_or_a_lab_pod_says_what_to_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "explain", "--from", "a/b", "--to", "shop/db/db-0:5432"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("smesh: error: --to 'shop/db/db-0:5432' names no lab pod")
    assert "--policy FILE" in err


def test_the_agent_serves_its_policy_with_a_digest_of_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    config = AgentConfig.model_validate(
        {
            "node": "node-1",
            "workloads": str(tmp_path / "workloads"),
            "policy": str(path),
            "identity": {"trustDomain": "td.example"},
        }
    )
    agent = Agent(config, MeshWiring(config))
    reply = agent._debug_policy()
    assert reply.status == 200
    doc = json.loads(reply.body)
    assert (doc["node"], doc["trust_domain"], doc["file"]) == ("node-1", "td.example", str(path))
    assert doc["digest"] == digest(parse(POLICY))
    assert from_document(doc["policy"]) == parse(POLICY)
    assert (doc["rules"], doc["default"], doc["pending"], doc["last_refused"]) == (
        2,
        "deny",
        None,
        None,
    )
