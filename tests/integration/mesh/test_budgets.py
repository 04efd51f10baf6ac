"""Floods against one pod (pod-3): the pod's other callers keep getting through.

The attacks of issue 18: connections that never finish a handshake, from a node that can
reach the tunnel port; and an ordinary meshed app holding thousands of connections.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from smesh.agent import client
from tests.integration.labkit import Lab, LabFactory
from tests.integration.mesh.conftest import Apps
from tests.integration.mesh.test_adversarial import credential, lab_ca

FLOOD = str(Path(__file__).with_name("flood.py"))
POD3, POD4 = "198.18.2.2", "198.18.2.3"
SINK = 9100


def flood(lab: Lab, member: str, *args: object) -> tuple[subprocess.Popen[str], str]:
    """Start flood.py in *member*; returns once its first round is in place, with the
    line it said so with."""
    proc = lab.spawn(
        member, [sys.executable, FLOOD, *map(str, args)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline()  # type: ignore[return-value]


def last_report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def turned_away(lab: Lab, node: str) -> dict[str, float]:
    status = next(n for n in lab.status()["nodes"] if n["name"] == node)
    text = client.get("127.0.0.1", 15020, "/metrics", netns=status["netns"]).body.decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("smesh_connections_turned_away_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split("{", 1)[1].rstrip("}")] = float(value)
    return counts


def test_stalled_handshakes_from_a_node_do_not_lock_out_a_pods_callers(apps: Apps) -> None:
    lab = apps.lab
    _sink, ready = flood(lab, "pod-3", "sink", SINK)
    assert ready.strip() == "READY"
    attack, ready = flood(lab, "node-1", "stall", POD3, 18001, 5000, 500, 15)
    assert ready.strip() == "READY"
    # No carrier to pod-3 exists yet: these need new handshakes during the flood.
    for pod in ("pod-1", "pod-2"):
        result = apps.run(pod, "many", POD3, SINK, 100, timeout=120)
        assert result == {"ok": 100, "unfinished": 0}, (pod, result)
    report = last_report(attack)
    assert report["rounds"] >= 2, report
    # node-1's share of handshakes under way, and what the last round opened meanwhile
    assert report["alive"] <= 16, report
    away = turned_away(lab, "node-2")
    assert away['direction="inbound",reason="handshakes_per_source"'] > 0, away
    assert away['direction="inbound",reason="at_cap"'] == 0, away


def test_a_peer_holding_thousands_of_connections_takes_only_its_share(apps: Apps) -> None:
    lab = apps.lab
    for pod in ("pod-3", "pod-4"):
        _sink, ready = flood(lab, pod, "sink", SINK)
        assert ready.strip() == "READY"
    holder, ready = flood(lab, "pod-1", "hold", POD3, SINK, 5000, 60)
    held = json.loads(ready)["held"]
    assert 1000 <= held <= 1024, ready  # its share (limits.maxStreamsPerPeer), less setup
    # Other pods to pod-3, and the holder's own other flows, while it holds its share.
    for pod, target in (("pod-2", POD3), ("pod-4", POD3), ("pod-1", POD4)):
        result = apps.run(pod, "many", target, SINK, 100, timeout=120)
        assert result == {"ok": 100, "unfinished": 0}, (pod, target, result)
    away_1, away_2 = turned_away(lab, "node-1"), turned_away(lab, "node-2")
    assert away_1['direction="outbound",reason="peer_streams"'] > 0, away_1
    assert away_1['direction="outbound",reason="at_cap"'] == 0, away_1
    assert away_2['direction="inbound",reason="at_cap"'] == 0, away_2
    holder.kill()


def test_idle_carriers_with_a_valid_certificate_are_held_to_the_peers_share(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    """300 idle carriers from one peer against a cap of 250 (scaled down from 4,000 against
    4,096: each costs a full handshake on a shared machine): the peer keeps its share of
    16, and pod-3's other callers get through."""
    lab = lab_factory("--agent-set", "limits.maxConnectionsPerPod=250")
    apps = Apps(lab)
    _sink, ready = flood(lab, "pod-3", "sink", SINK)
    assert ready.strip() == "READY"
    cert, key = credential(tmp_path, lab_ca(lab), "pod-1")
    holder, ready = flood(lab, "node-1", "carriers", POD3, 18001, 300, cert, key, 60)
    assert json.loads(ready)["held"] <= 16, ready  # limits.maxCarriersPerPeer
    for pod in ("pod-1", "pod-2"):
        result = apps.run(pod, "many", POD3, SINK, 100, timeout=120)
        assert result == {"ok": 100, "unfinished": 0}, (pod, result)
    away = turned_away(lab, "node-2")
    assert away['direction="inbound",reason="at_cap"'] == 0, away
    holder.kill()
