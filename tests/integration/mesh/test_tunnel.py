"""Captured traffic through real mutual TLS in the lab: apps unchanged, bytes exact."""

from __future__ import annotations

import re
import time
from pathlib import Path

from smesh.agent import client
from smesh.lab.agents import DEBUG_PORT
from smesh.tunnel import window
from tests.integration.labkit import Lab, access
from tests.integration.mesh.conftest import Apps

POD2, POD3 = "198.18.1.3", "198.18.2.2"
MB = 1024 * 1024


def access_log(lab: Lab) -> list[dict[str, object]]:
    nodes = Path(f"/run/smesh/labs/{lab.name}").glob("node-*/agent.log")
    return [r for log in nodes for r in access(lab, log.parent.name)]


def test_curl_reaches_http_servers_on_another_node_and_the_same_node(meshed: Lab) -> None:
    for pod, text in (("pod-3", "other node"), ("pod-2", "same node")):
        meshed.spawn(
            pod,
            [
                "sh",
                "-c",
                f"echo '{text}' > /tmp/{meshed.name}-{pod}.txt; "
                "cd /tmp && exec python3 -m http.server 8080",
            ],
        )
    for ip, pod, text in ((POD3, "pod-3", "other node"), (POD2, "pod-2", "same node")):
        meshed.wait_tcp("pod-1", ip, 8080)
        page = meshed.exec(
            "pod-1", ["curl", "-sS", "-m", "10", f"http://{ip}:8080/{meshed.name}-{pod}.txt"]
        )
        assert page.returncode == 0, page.stderr
        assert page.stdout == f"{text}\n"
    tunnelled = [
        r for r in access_log(meshed) if r["direction"] == "outbound" and r["result"] == "ok"
    ]
    assert {r["destination_pod"] for r in tunnelled} >= {"pod-2", "pod-3"}
    assert all(
        r["peer_identity"] == f"spiffe://cluster.local/ns/default/sa/{r['destination_pod']}"
        for r in tunnelled
    )


def test_200_mb_round_trip_both_directions_at_once_byte_exact(apps: Apps) -> None:
    size = 200 * MB
    server = apps.serve("pod-3", "xfer", 9000, size, 2)
    mine = apps.run("pod-1", "xfer", POD3, 9000, size, 1)
    theirs = Apps.report(server)
    assert mine["received"] == size
    assert theirs["received"] == size
    assert mine["sent_sha256"] == theirs["received_sha256"]
    assert theirs["sent_sha256"] == mine["received_sha256"]


def test_half_close_the_client_gets_the_full_reply(apps: Apps) -> None:
    apps.serve("pod-3", "halfclose", 9001)
    result = apps.run("pod-1", "halfclose", POD3, 9001, 3 * MB)
    assert result["ok"], result


def test_a_closed_port_through_the_mesh_is_a_reset_within_a_second(apps: Apps) -> None:
    result = apps.run("pod-1", "expect-reset", POD3, 9999)
    assert result["outcome"] == "reset"
    assert result["seconds"] < 1.0


def test_a_server_resetting_mid_stream_resets_the_client(apps: Apps) -> None:
    apps.serve("pod-3", "reset", 9002)
    result = apps.run("pod-1", "read-to-end", POD3, 9002)
    assert result == {"received": "partial", "ended": "reset"}  # never a clean EOF
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        records = [r for r in access_log(apps.lab) if r["destination"] == f"{POD3}:9002"]
        if len(records) == 2:
            break
        time.sleep(0.1)
    assert sorted(r["direction"] for r in records) == ["inbound", "outbound"]
    assert all(r["result"] == "reset" for r in records)


def agent_rss_kib(lab: Lab) -> int:
    total = 0
    for node in lab.status()["nodes"]:
        status = Path(f"/proc/{node['agent_pid']}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total


def test_a_slow_reader_keeps_the_proxies_memory_bounded(apps: Apps) -> None:
    """A receiver at 1 KB/s facing a fast sender: a stream holds at most its largest window."""
    apps.serve("pod-3", "source", 9003)
    before = agent_rss_kib(apps.lab)
    reader = apps.lab.spawn(
        "pod-1",
        [
            "python3",
            str(Path(__file__).with_name("app.py")),
            "slow-read",
            POD3,
            "9003",
            "1000",
            "6",
        ],
    )
    namespaces = [node["netns"] for node in apps.lab.status()["nodes"]]

    def pending_bytes() -> list[int]:
        found = []
        for ns in namespaces:
            doc = client.get("127.0.0.1", DEBUG_PORT, "/debug/connections", netns=ns).json()
            found += [c["pending_bytes"] for c in doc["connections"]]
        return found

    deadline = time.monotonic() + 15  # the reader's start: a process in a pod, and a connect
    while not pending_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)  # the fast sender fills the stream's window meanwhile
    pending = pending_bytes()
    during = agent_rss_kib(apps.lab)
    reader.wait(timeout=30)
    assert pending, "the slow connection was not seen by the agents"
    assert max(pending) <= window.MAX_WINDOW
    # Kernel socket buffers are not the proxy's; what the agents themselves grew by is
    # bounded by the stream's window plus allocator slack.
    assert during - before < window.MAX_WINDOW // 1024 + 8 * 1024, (before, during)


def test_a_thousand_concurrent_tunnelled_connections(apps: Apps) -> None:
    apps.serve("pod-3", "echo", 9004)
    result = apps.run("pod-1", "many", POD3, 9004, 1000, timeout=300)
    assert result == {"ok": 1000, "unfinished": 0}
