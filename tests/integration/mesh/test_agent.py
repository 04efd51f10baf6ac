"""The node agent in the lab: pods coming and going, readiness, metrics, logs, stopping."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smesh.agent import client
from smesh.lab import state
from smesh.lab.agents import admin_port
from tests.integration.labkit import Lab, access, smesh
from tests.integration.mesh.conftest import APP, Apps

POD2, POD3 = "198.18.1.3", "198.18.2.2"
POD1_IDENTITY = "spiffe://cluster.local/ns/default/sa/pod-1"


def node(lab: Lab, name: str) -> dict[str, Any]:
    return next(n for n in lab.status()["nodes"] if n["name"] == name)


_NETNS: dict[tuple[str, str], str] = {}


def netns_of(lab: Lab, node_name: str) -> str:
    """A node's network namespace, asked once per lab (``lab status`` starts the CLI: up to a
    second or more on a loaded machine, which a polling loop would pay at every turn)."""
    key = (lab.name, node_name)
    if key not in _NETNS:
        _NETNS[key] = str(node(lab, node_name)["netns"])
    return _NETNS[key]


def admin(lab: Lab, node_name: str, path: str) -> client.AdminReply:
    return client.get("127.0.0.1", admin_port(path), path, netns=netns_of(lab, node_name))


def meshed_here(lab: Lab, node_name: str) -> set[str]:
    """The pods (by name) the node's agent meshes: its /debug/workloads, not its registry."""
    reply = admin(lab, node_name, "/debug/workloads")
    return {w["name"] for w in reply.json()["workloads"]}


def metric(body: bytes, name: str, labels: str) -> float:
    selector = rf"\{{{labels}\}}" if labels else ""
    match = re.search(rf"^{name}{selector} (\S+)$", body.decode(), re.M)
    return float(match.group(1)) if match else 0.0


def total(body: bytes, name: str, **labels: str) -> float:
    """The sum of *name*'s series whose labels include *labels* (0 if there are none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def set_meshed(lab: Lab, pod: str, meshed: bool | None) -> None:
    """Change a pod in the workload source, as the Kubernetes API would."""
    path = state.workloads_dir(lab.name) / f"{pod}.json"
    if meshed is None:
        path.unlink()
        return
    doc = json.loads(path.read_text())
    doc["meshed"] = meshed
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def seen_from(lab: Lab, server: subprocess.Popen[str]) -> str:
    """Connect from pod-1 to pod-3's echo-peer server; return the peer address it saw."""
    result = Apps(lab).run("pod-1", "halfclose", POD3, 9100, 10)
    assert result["ok"]
    return str(Apps.report(server)["peer"]).removeprefix("::ffff:")


def wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_pods_leave_and_join_the_mesh_at_run_time(meshed: Lab, apps: Apps) -> None:
    server = apps.serve("pod-3", "halfclose", 9100)
    # Meshed: pod-3's agent delivers the bytes, from pod-3's own address.
    assert seen_from(meshed, server) == POD3
    apps.serve("pod-3", "echo", 9101)
    long_lived = meshed.spawn(  # one exchange, then an idle, open connection
        "pod-1",
        [sys.executable, APP, "read-to-end", POD3, "9101"],
        stdout=subprocess.PIPE,
        text=True,
    )
    wait(lambda: admin(meshed, "node-1", "/debug/connections").json()["connections"] != [])

    started = time.monotonic()
    set_meshed(meshed, "pod-1", meshed=False)
    wait(
        lambda: (
            not any(
                w["name"] == "pod-1"
                for w in admin(meshed, "node-1", "/debug/workloads").json()["workloads"]
            )
        )
    )
    assert time.monotonic() - started < 1.5  # within a second of the change (plus polling)
    out, _ = long_lived.communicate(timeout=10)
    assert json.loads(out)["ended"] == "reset"  # its open connection was closed, loudly
    # pod-1 now talks plain, and meshed pod-3 takes no plaintext (strict by default).
    attempt = apps.run("pod-1", "try-connect", POD3, 9100, 2)
    assert attempt == {"connected": False, "error": "TimeoutError"}

    set_meshed(meshed, "pod-1", meshed=True)  # (/ready stays 200 throughout: wait for pod-1)
    wait(lambda: "pod-1" in meshed_here(meshed, "node-1"))
    wait(lambda: admin(meshed, "node-1", "/ready").status == 200)
    assert seen_from(meshed, server) == POD3


def test_readiness_names_what_a_pod_is_waiting_for(meshed: Lab) -> None:
    assert admin(meshed, "node-1", "/ready").status == 200
    lab = state.load(meshed.name)
    assert lab is not None
    assert lab.signer is not None
    os.kill(lab.signer.pid, signal.SIGKILL)  # the signing service is gone
    set_meshed(meshed, "pod-2", meshed=False)
    wait(lambda: "pod-2" not in meshed_here(meshed, "node-1"))
    set_meshed(meshed, "pod-2", meshed=True)
    wait(lambda: admin(meshed, "node-1", "/ready").status == 503)
    reply = admin(meshed, "node-1", "/ready")
    assert b"default/pod-2: signing service" in reply.body
    assert admin(meshed, "node-1", "/healthz").status == 200  # alive, just not ready


def test_a_pods_changed_workload_during_a_signer_outage_keeps_it_captured_and_served(
    meshed: Lab, apps: Apps
) -> None:
    """Review finding 3: a changed workload (same pod) is a replacement, not a release."""
    server = apps.serve("pod-3", "halfclose", 9100)
    assert seen_from(meshed, server) == POD3
    lab = state.load(meshed.name)
    assert lab is not None
    assert lab.signer is not None
    os.kill(lab.signer.pid, signal.SIGKILL)  # the signing service is gone
    path = state.workloads_dir(meshed.name) / "pod-3.json"
    doc = json.loads(path.read_text())
    doc["ips"] = doc["ips"][:1]  # pod-3 loses its IPv6 address: same pod, new workload
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)

    def replaced() -> bool:
        [pod3] = [
            w
            for w in admin(meshed, "node-2", "/debug/workloads").json()["workloads"]
            if w["name"] == "pod-3"
        ]
        return pod3["ips"] == [POD3] and pod3["stage"] == "ready"

    wait(replaced, timeout=15)
    assert admin(meshed, "node-2", "/ready").status == 200  # its certificate stayed
    status = json.loads(smesh("capture", "status", "--lab", meshed.name, "--json").stdout)
    node2 = next(n for n in status["nodes"] if n["name"] == "node-2")
    assert "pod-3" in {p["name"] for p in node2["pods"]}
    assert seen_from(meshed, server) == POD3  # tunnelled, delivered in pod-3's namespace


def client_handshakes(metrics: bytes) -> float:
    return sum(
        metric(
            metrics, "smesh_tls_handshake_duration_seconds_count", f'resumed="{r}",side="client"'
        )
        for r in ("false", "true")
    )


def test_metrics_and_access_log_after_known_traffic(meshed: Lab, apps: Apps) -> None:
    apps.serve("pod-3", "halfclose", 9102)
    handshakes_before = client_handshakes(admin(meshed, "node-1", "/metrics").body)
    for _ in range(5):
        assert apps.run("pod-1", "halfclose", POD3, 9102, 1000)["ok"]

    def closed(node_name: str, direction: str) -> float:
        body = admin(meshed, node_name, "/metrics").body
        return metric(
            body, "smesh_connections_closed_total", f'direction="{direction}",result="ok"'
        )

    # an agent counts a connection, and writes its record, when it has seen both ends close
    wait(lambda: closed("node-1", "outbound") >= 5 and closed("node-2", "inbound") >= 5)
    out = admin(meshed, "node-1", "/metrics").body
    inb = admin(meshed, "node-2", "/metrics").body
    assert total(out, "smesh_tcp_connections_opened_total", reporter="source") == 5
    assert metric(out, "smesh_connections_closed_total", 'direction="outbound",result="ok"') == 5
    assert metric(inb, "smesh_connections_closed_total", 'direction="inbound",result="ok"') == 5
    # Istio's names: "received" is the request (source → destination), "sent" the answer
    assert total(out, "smesh_tcp_received_bytes_total", reporter="source") == 5 * 1000
    assert total(out, "smesh_tcp_sent_bytes_total", reporter="source") >= 5 * 70
    # the five connections rode one pooled TLS connection: at most one handshake for them
    assert client_handshakes(out) - handshakes_before <= 1
    assert metric(out, "smesh_tunnel_carriers", 'side="client"') >= 1
    assert metric(inb, "smesh_tunnel_carriers", 'side="server"') >= 1
    assert metric(out, "smesh_tunnel_setup_duration_seconds_count", "") == 5
    assert (
        total(out, "smesh_certificate_expiry_timestamp_seconds", principal=POD1_IDENTITY)
        > time.time()
    )
    assert b"smesh_build_info{" in out
    # the event loop's lag, sampled from the start (loopLagInterval, 100 ms by default)
    assert metric(out, "smesh_agent_event_loop_lag_seconds_count", "") > 0
    assert metric(inb, "smesh_agent_event_loop_lag_seconds_count", "") > 0
    assert b'smesh_agent_event_loop_lag_seconds_bucket{le="5e-05"}' in out
    assert b"\nsmesh_stream_window_growth_bytes 0.0\n" in out  # exported, and given back
    assert metric(out, "smesh_active_connections", 'direction="outbound"') == 0
    # exported from the start (metric() would read a missing series as 0 too)
    turned_away = b'smesh_connections_turned_away_total{direction="outbound",reason="at_cap"}'
    assert b"\n" + turned_away + b" 0.0\n" in out

    records = access(meshed, "node-1")
    record = next(r for r in records if r["destination"] == f"{POD3}:9102")
    assert record["pod"] == "pod-1"
    assert record["identity"] == "spiffe://cluster.local/ns/default/sa/pod-1"
    assert record["destination_pod"] == "pod-3"
    assert record["peer_identity"] == "spiffe://cluster.local/ns/default/sa/pod-3"
    assert record["bytes_sent"] == 1000
    assert record["bytes_received"] > 0
    assert record["duration_s"] > 0
    assert record["result"] == "ok"
    # the far side's record of the same connection carries the same request id
    inbound = access(meshed, "node-2")
    ids = {r["request_id"] for r in records if r["destination"] == f"{POD3}:9102"}
    assert len(ids) == 5
    assert "" not in ids
    assert ids == {r["request_id"] for r in inbound if r["destination"] == f"{POD3}:9102"}


def test_sigterm_drains_a_long_transfer_then_leaves_capture_failing_closed(
    meshed: Lab, apps: Apps
) -> None:
    size = 40 * 1024 * 1024
    server = apps.serve("pod-3", "xfer", 9103, size, 7)
    transfer = meshed.spawn(
        "pod-1",
        [sys.executable, APP, "xfer", POD3, "9103", str(size), "8", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # the transfer is under way (SIGTERM stops the agent taking new connections)
    wait(lambda: admin(meshed, "node-1", "/debug/connections").json()["connections"] != [], 15)
    agent = node(meshed, "node-1")
    os.kill(agent["agent_pid"], signal.SIGTERM)
    out, _ = transfer.communicate(timeout=30)
    mine, theirs = json.loads(out), Apps.report(server)
    assert mine["received"] == size
    assert mine["sent_sha256"] == theirs["received_sha256"]  # completed intact
    assert theirs["sent_sha256"] == mine["received_sha256"]
    wait(lambda: node(meshed, "node-1")["agent_health"] == "dead", timeout=10)
    log = Path(f"/run/smesh/labs/{meshed.name}/node-1/agent.log").read_text()
    assert '"msg": "agent stopped"' in log
    # Capture stays, as after a crash: pod-1's connects are refused, even to pod-2 on
    # the same node, which would take them in plain text if they left uncaptured.
    echo = apps.serve("pod-2", "halfclose", 9104)
    refused = apps.run("pod-1", "expect-reset", POD2, 9104)
    assert refused["outcome"] in {"ConnectionRefusedError", "reset"}
    assert echo.stdout is not None
    os.set_blocking(echo.stdout.fileno(), False)
    assert echo.stdout.readline() == "", "pod-2 received a connection from pod-1 in plain text"
    os.set_blocking(echo.stdout.fileno(), True)
    # Removing the mesh on purpose still works with the agent stopped: pods talk plain.
    smesh("capture", "detach", "--lab", meshed.name, "--node", "node-1")
    assert apps.run("pod-1", "halfclose", POD2, 9104, 10)["ok"]
    assert str(Apps.report(echo)["peer"]).removeprefix("::ffff:") == "198.18.1.2"
    apps.serve("pod-3", "halfclose", 9104)  # pod-3, still meshed on node-2, takes no plain text
    attempt = apps.run("pod-1", "try-connect", POD3, 9104, 2)
    assert attempt == {"connected": False, "error": "TimeoutError"}


def test_after_kill_9_captured_connects_fail_closed_and_a_restart_takes_over(
    meshed: Lab, apps: Apps
) -> None:
    server = apps.serve("pod-3", "halfclose", 9105)
    os.kill(node(meshed, "node-1")["agent_pid"], signal.SIGKILL)
    wait(lambda: node(meshed, "node-1")["agent_health"] == "dead")
    refused = apps.run("pod-1", "expect-reset", POD3, 9105)
    assert refused["outcome"] in {"ConnectionRefusedError", "reset"}  # never plaintext
    assert server.stdout is not None
    os.set_blocking(server.stdout.fileno(), False)
    assert server.stdout.readline() == "", (
        "pod-3 received a connection while pod-1's agent was dead"
    )
    os.set_blocking(server.stdout.fileno(), True)

    smesh("lab", "restart-agent", "--name", meshed.name, "node-1")
    assert apps.run("pod-1", "halfclose", POD3, 9105, 10)["ok"]
    assert str(Apps.report(server)["peer"]).removeprefix("::ffff:") == POD3  # tunnelled again


def test_a_pod_that_left_the_mesh_while_its_agent_was_down_is_released_by_the_next(
    meshed: Lab, apps: Apps
) -> None:
    apps.serve("pod-3", "halfclose", 9100)
    os.kill(node(meshed, "node-1")["agent_pid"], signal.SIGKILL)
    wait(lambda: node(meshed, "node-1")["agent_health"] == "dead")
    set_meshed(meshed, "pod-2", meshed=False)
    smesh("lab", "restart-agent", "--name", meshed.name, "node-1")

    status = json.loads(smesh("capture", "status", "--lab", meshed.name, "--json").stdout)
    node1 = next(n for n in status["nodes"] if n["name"] == "node-1")
    assert {p["name"] for p in node1["pods"]} == {"pod-1"}
    # pod-2 connects plainly again (not to an agent port nobody listens on), and meshed
    # pod-3 takes no plaintext.
    attempt = apps.run("pod-2", "try-connect", POD3, 9100, 2)
    assert attempt == {"connected": False, "error": "TimeoutError"}


def test_a_bad_config_file_is_one_line_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node: node-1\nworkloads: /tmp\nadmin:\n  port: 99999\n")
    proc = subprocess.run(
        [sys.executable, "-m", "smesh", "agent", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"smesh: error: {config}: admin.port: ")


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--set", "timeouts.drain=soon"], {}), ([], {"SMESH__TIMEOUTS__DRAIN": "soon"})],
)
def test_a_bad_override_is_one_line_naming_the_field(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("node: node-1\nworkloads: /tmp\n")
    proc = subprocess.run(
        [sys.executable, "-m", "smesh", "agent", "--config", str(config), *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "timeouts.drain: 'soon' is not a duration" in proc.stderr
