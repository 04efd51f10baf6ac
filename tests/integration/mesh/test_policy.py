"""Identity and authorization in the lab: entitlement at the signer, policy at the tunnel."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from smesh.agent import client
from smesh.identity import certs
from smesh.identity.errors import NotEntitled
from smesh.identity.service import SignerClient
from smesh.identity.spiffe import SpiffeId
from smesh.jsonlines import whole_lines
from tests.integration.labkit import Lab, LabFactory

POD3 = "198.18.2.2"
DENY_POD1 = """
rules:
  - name: no-pod1-to-pod3
    action: deny
    from: [{identity: "spiffe://cluster.local/ns/default/sa/pod-1"}]
    to: [{pod: pod-3}]
"""


def fetch(lab: Lab, pod: str) -> int:
    return lab.exec(
        pod, ["curl", "-sS", "-m", "8", "-o", "/dev/null", f"http://{POD3}:8080/"]
    ).returncode


def agent_of(lab: Lab, node: str) -> dict[str, object]:
    return next(n for n in lab.status()["nodes"] if n["name"] == node)


def wait_log(lab: Lab, node: str, needle: str, timeout: float = 5) -> str:
    log = Path(f"/run/smesh/labs/{lab.name}/{node}/agent.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in whole_lines(log):  # not one the agent is still writing
            if needle in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no log line with {needle!r} in {log}")


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(DENY_POD1)
    return path


@pytest.fixture
def lab(lab_factory: LabFactory, policy_file: Path) -> Lab:
    lab = lab_factory("--policy", str(policy_file))
    lab.spawn("pod-3", ["python3", "-m", "http.server", "8080", "--directory", "/etc"])
    lab.wait_tcp("pod-2", POD3, 8080)
    return lab


def test_a_denied_source_is_refused_with_a_log_line_naming_both_identities_and_the_rule(
    lab: Lab,
) -> None:
    assert fetch(lab, "pod-2") == 0
    assert fetch(lab, "pod-1") != 0  # curl sees the connection reset
    line = wait_log(lab, "node-2", '"msg": "denied ')
    assert (
        "spiffe://cluster.local/ns/default/sa/pod-1 -> spiffe://cluster.local/ns/default/sa/pod-3"
        in line
    )
    assert "no-pod1-to-pod3" in line
    metrics = client.get(
        "127.0.0.1", 15020, "/metrics", netns=str(agent_of(lab, "node-2")["netns"])
    )
    assert b'smesh_policy_denials_total{rule="no-pod1-to-pod3"} 1.0' in metrics.body


def test_policy_reloads_on_sighup_and_a_bad_edit_keeps_the_old_one(
    lab: Lab, policy_file: Path
) -> None:
    pid = int(str(agent_of(lab, "node-2")["agent_pid"]))
    policy_file.write_text("rules: [{name: broken, action: perhaps}]\n")
    os.kill(pid, signal.SIGHUP)
    wait_log(lab, "node-2", "policy not reloaded, keeping the previous one")
    assert fetch(lab, "pod-1") != 0
    policy_file.write_text("rules: []\n")
    os.kill(pid, signal.SIGHUP)
    wait_log(lab, "node-2", "policy reloaded")
    assert fetch(lab, "pod-1") == 0


def test_the_signer_gives_a_node_only_the_identities_of_its_own_pods(lab: Lab) -> None:
    base = Path(f"/run/smesh/labs/{lab.name}")
    signer = SignerClient.from_directory(
        base / "ca" / "signer.sock", base / "node-1" / "credential"
    )

    def request(who: str) -> bytes:
        key = certs.new_key()
        csr = certs.csr_for(key, str(SpiffeId.for_workload("default", who)))
        return csr.public_bytes(serialization.Encoding.PEM)

    assert signer.sign(request("pod-1")).chain_pem  # pod-1 runs on node-1
    with pytest.raises(NotEntitled, match=r"node node-1 may not obtain .*pod-3"):
        signer.sign(request("pod-3"))  # pod-3 runs on node-2
