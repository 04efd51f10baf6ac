"""Stopping and restarting an agent never lets a pod's traffic out in plain text.

Planned (restart-agent, SIGTERM) or not (kill -9), a stopped agent leaves its pods'
capture pinned: their connects are refused until the next agent serves them. A packet
capture on node-1's link to the fabric proves it, against a destination that would
accept plain text (``capture.inboundPlaintext: allow``). With the signing service away,
the restarted agent serves its pods with the certificates its predecessor cached.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from smesh.capture import libbpf, pins
from smesh.lab import control, state
from smesh.linux import cgroups
from tests.integration.labkit import Lab, LabFactory, Lines, smesh, sniffing
from tests.integration.mesh.conftest import APP, Apps
from tests.integration.mesh.test_agent import POD3, admin, metric, node, seen_from, wait

POD1 = "198.18.1.2"
APP_PORT = 8080
TUNNEL = re.compile(r"\.18001[: ]")
PLAIN = re.compile(rf"\.{APP_PORT}[: ]")


def grows(lines: Lines, by: int) -> None:
    count = len(lines.lines)
    wait(lambda: len(lines.lines) >= count + by, timeout=30)


def stop_and_restart(lab: Lab, way: str) -> None:
    pid = node(lab, "node-1")["agent_pid"]
    if way == "sigterm":
        os.kill(pid, signal.SIGTERM)
    elif way == "kill-9":
        os.kill(pid, signal.SIGKILL)
    if way != "restart-agent":
        wait(lambda: node(lab, "node-1")["agent_health"] == "dead", timeout=15)
        time.sleep(0.5)  # the outage is on the wire for a while
    smesh("lab", "restart-agent", "--name", lab.name, "node-1")  # SIGTERM first if running


def test_no_way_of_stopping_an_agent_lets_a_connect_out_in_plain_text(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory("--agent-set", "capture.inboundPlaintext=allow")
    server = Apps(lab).serve("pod-3", "halfclose", APP_PORT)  # would take plain text too
    served = Lines(server.stdout)
    for way in ("restart-agent", "sigterm", "kill-9"):
        stop = tmp_path / f"stop-{way}"
        with sniffing(lab, "node-1") as packets:
            client = lab.spawn(
                "pod-1",
                [sys.executable, APP, "loop", POD3, str(APP_PORT), str(stop)],
                stdout=subprocess.PIPE,
                text=True,
            )
            grows(served, 3)  # flowing
            stop_and_restart(lab, way)
            restarted = time.time()
            grows(served, 3)  # flowing again
            stop.touch()
            out, _ = client.communicate(timeout=30)
        loop = json.loads(out)
        plain = [p for p in packets.lines if PLAIN.search(p)]
        assert plain == [], f"{way}: plain text on node-1's link: {plain[:5]}"
        assert any(TUNNEL.search(p) for p in packets.lines), f"{way}: the capture saw no tunnel"
        assert any(t > restarted for t in loop["worked"]), f"{way}: {loop['failed']}"
    # Everything pod-3's app received came through its agent (from pod-3's own address),
    # none straight from pod-1.
    peers = {json.loads(line)["peer"].removeprefix("::ffff:") for line in served.lines}
    assert peers == {POD3}

    # Removing the mesh on purpose still removes capture: lab down stops the agents (which
    # keep capture now) and then takes every link with the lab.
    pin_dir = state.bpf_pin_dir(lab.name) / "node-1"
    with pins.PinnedCapture(pin_dir) as pinned:
        links = {info.id for _pin, info in pinned.links()}
    assert links
    smesh("lab", "down", "--name", lab.name)
    assert not pin_dir.exists()
    assert not links & {link.id for link in libbpf.links()}


def test_with_the_signer_stopped_a_restarted_agent_serves_its_pods_from_its_cache(
    meshed: Lab, apps: Apps
) -> None:
    outbound = apps.serve("pod-3", "halfclose", 9100)
    inbound = apps.serve("pod-1", "halfclose", 9101)
    lab = state.load(meshed.name)
    assert lab is not None
    assert lab.signer is not None
    os.kill(lab.signer.pid, signal.SIGKILL)  # the signing service is gone
    wait(lambda: not lab.signer.alive())  # type: ignore[union-attr]

    smesh("lab", "restart-agent", "--name", meshed.name, "node-1")  # ready: served from cache
    status = json.loads(smesh("capture", "status", "--lab", meshed.name, "--json").stdout)
    node1 = next(n for n in status["nodes"] if n["name"] == "node-1")
    assert {p["name"] for p in node1["pods"]} == {"pod-1", "pod-2"}  # still captured
    assert seen_from(meshed, outbound) == POD3  # pod-1 → pod-3 through the mesh
    assert apps.run("pod-3", "halfclose", POD1, 9101, 10)["ok"]  # node-2 accepted pod-1's cert
    assert str(Apps.report(inbound)["peer"]).removeprefix("::ffff:") == POD1
    # Nothing reaches pod-1's app in plain text from a node.
    attempt = apps.run("node-2", "try-connect", POD1, 9101, 2)
    assert attempt == {"connected": False, "error": "TimeoutError"}
    metrics = admin(meshed, "node-1", "/metrics").body
    assert metric(metrics, "smesh_credential_cache_loads_total", 'result="used"') == 2
    cached_expiry = metric(
        metrics,
        "smesh_certificate_expiry_timestamp_seconds",
        'principal="spiffe://cluster.local/ns/default/sa/pod-1"',
    )

    # The signer answers again: the cached certificates are renewed from it (retried
    # every 10 s), and the mesh works on with the new ones.
    control.start_signer(lab.topology(), cgroups.v2_root())  # in the lab's cgroup: lab down
    wait(
        lambda: (
            metric(
                admin(meshed, "node-1", "/metrics").body,
                "smesh_certificate_expiry_timestamp_seconds",
                'principal="spiffe://cluster.local/ns/default/sa/pod-1"',
            )
            > cached_expiry
        ),
        timeout=30,
    )
    assert seen_from(meshed, outbound) == POD3
