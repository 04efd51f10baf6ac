"""The status entry an agent writes for an AuthorizationPolicy, and when it need not."""

from __future__ import annotations

import datetime

from smesh.kubernetes.policies import agent_entry, shows, status_patch
from smesh.policy.crd import Outcome

OUTCOME = Outcome("shop", "no-batch", "uid-1", 3, True, "in force")


def test_the_patch_is_this_nodes_entry_with_the_uid_as_precondition() -> None:
    now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    body = status_patch(OUTCOME, "node-1", now)
    assert body["metadata"] == {"name": "no-batch", "namespace": "shop", "uid": "uid-1"}
    assert body["status"] == {
        "agents": [
            {
                "node": "node-1",
                "observedGeneration": 3,
                "applied": True,
                "message": "in force",
                "lastUpdate": "2026-01-02T03:04:05Z",
            }
        ],
        "appliedNodes": ["node-1"],
    }
    refused = Outcome("shop", "no-batch", "uid-1", 3, False, "not applied: spec: x")
    assert "appliedNodes" not in status_patch(refused, "node-1", now)["status"]


def test_an_entry_that_already_says_the_outcome_is_not_written_again() -> None:
    obj = status_patch(OUTCOME, "node-1", datetime.datetime.now(datetime.UTC))
    obj["status"]["agents"].insert(0, {"node": "node-2", "applied": False})
    assert shows(obj, "node-1", OUTCOME)
    assert not shows(obj, "node-2", OUTCOME)
    assert not shows(obj, "node-3", OUTCOME)
    assert not shows(obj, "node-1", Outcome("shop", "no-batch", "uid-1", 4, True, "in force"))
    obj["status"]["appliedNodes"] = []  # e.g. removed by hand: written again
    assert not shows(obj, "node-1", OUTCOME)
    assert agent_entry({"status": "garbage"}, "node-1") is None
    assert agent_entry({}, "node-1") is None
