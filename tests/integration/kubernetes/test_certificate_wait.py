"""A pod's start does not wait for the signer; its connections do, and fail closed.

The CNI ADD is answered once the pod is captured and its listeners are open: with the
signer stopped (SIGSTOP: its socket accepts, nothing answers, as a hung signer), a new
pod of an identity the node holds no certificate for still starts. Its first connection
waits for the certificate (``timeouts.certificateWait``, 5 s by default) and goes through
once the signer answers; with the signer away for longer than that, the connection is
reset, logged and counted (``no_certificate``), and nothing of it leaves in plain text.

One 2-node meshed Kubernetes lab; the server on node-2 and a warm-up client on node-1
get their certificates before the signer stops, the pods under test after.
"""

from __future__ import annotations

import collections.abc
import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from smesh.agent import client as admin_client
from smesh.lab import state
from smesh.lab.agents import DEBUG_PORT
from tests.integration.kubernetes.clusterkit import (
    ECHO_SERVER,
    TRUST,
    access,
    kubectl,
    kubernetes_lab,
    running,
    sandbox_of,
    sniffing,
    wait_for,
)
from tests.integration.kubernetes.sandboxkit import attached_programs
from tests.integration.labkit import Lab

MARKER = f"smc{secrets.token_hex(6)}"
NAMESPACE = "late"


def pod(name: str, node: str, command: list[str] | None = None) -> dict[str, Any]:
    """A pod of its own ServiceAccount *name*: an identity no other pod holds."""
    container = {"name": "main", "image": "none", "command": command or ["sleep", "infinity"]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "serviceAccountName": name,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        },
    }


def manifest(*pods: dict[str, Any], namespace: bool = False) -> str:
    items: list[dict[str, Any]] = []
    if namespace:
        labels = {"smesh.io/mesh": "enabled"}
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": NAMESPACE, "labels": labels},
            }
        )
    for p in pods:
        name = p["metadata"]["name"]
        items.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": NAMESPACE},
            }
        )
        items.append(p)
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def workload(lab: Lab, node: str, name: str) -> dict[str, Any] | None:
    reply = admin_client.get(
        "127.0.0.1", DEBUG_PORT, "/debug/workloads", netns=f"{lab.name}.{node}"
    )
    assert reply.status == 200
    found = {w["pod"]: w for w in reply.json()["workloads"]}
    return found.get(f"{NAMESPACE}/{name}")


def metric(lab: Lab, node: str, name: str, labels: str) -> float:
    reply = admin_client.get("127.0.0.1", 15020, "/metrics", netns=f"{lab.name}.{node}")
    for line in reply.body.decode().splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def agent_log(lab: Lab, node: str) -> str:
    return (state.directory(lab.name) / node / "agent.log").read_text()


@contextlib.contextmanager
def signer_stopped(lab: Lab) -> collections.abc.Iterator[collections.abc.Callable[[], None]]:
    """The lab's signer stopped (SIGSTOP); the callable resumes it, as does leaving."""
    saved = state.load(lab.name)
    assert saved is not None
    assert saved.signer is not None
    assert saved.signer.alive()
    pid = saved.signer.pid
    os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        os.kill(pid, signal.SIGCONT)

    try:
        yield resume
    finally:
        resume()


def get(ip: str, path: str) -> list[str]:
    return ["curl", "-sS", "--max-time", "30", f"http://{ip}:8080/{path}-{MARKER}"]


def test_a_pod_starts_while_the_signer_is_away_and_its_connections_wait_or_fail_closed() -> None:
    # process agents: the test stops the lab's signer by pid and reads agent.log
    with kubernetes_lab("kc", "--nodes", "2", "--install", "processes") as lab:
        server = pod("web", "node-2", ["python3", "-c", ECHO_SERVER])
        warm = pod("warm", "node-1")
        kubectl(lab, "apply", "-f", "-", stdin=manifest(server, warm, namespace=True))
        web_ip = running(lab, "-n", NAMESPACE, "--field-selector", "metadata.name=web", count=1)[
            "web"
        ]["status"]["podIP"]
        running(lab, "-n", NAMESPACE, "--field-selector", "metadata.name=warm", count=1)
        lab.wait_tcp(f"{NAMESPACE}/warm", web_ip, 8080, timeout=60)  # both certificates held

        with signer_stopped(lab) as resume:
            kubectl(
                lab,
                "apply",
                "-f",
                "-",
                stdin=manifest(pod("late", "node-1"), pod("lone", "node-1")),
            )
            # Enrolled without the signer: the ADD succeeded, so the pods run, captured.
            found = running(lab, "-n", NAMESPACE, count=4)
            for name in ("late", "lone"):
                assert attached_programs(Path(sandbox_of(lab, found[name])["cgroup"])), name
                described = workload(lab, "node-1", name)
                assert described is not None
                assert described["stage"] == "ready"
                assert described["certificate"] == "pending"

            # Away for longer than timeouts.certificateWait: refused, never in plain text.
            with sniffing(lab, "node-1", "any") as packets:
                failed = lab.exec(f"{NAMESPACE}/lone", get(web_ip, "lone"))
            assert failed.returncode != 0, failed.stdout
            assert MARKER not in packets.text(), "plaintext of a captured connect on node-1"
            log = agent_log(lab, "node-1")
            assert (
                f"refused an outbound connection: no certificate for {TRUST}/ns/{NAMESPACE}/sa/lone"
                in log
            ), log[-3000:]
            assert "timeouts.certificateWait" in log
            turned_away = 'direction="outbound",reason="no_certificate"'
            assert metric(lab, "node-1", "smesh_connections_turned_away_total", turned_away) >= 1

            # Slow: the first connection of "late" waits, and goes through once it answers.
            waiting = lab.spawn(
                f"{NAMESPACE}/late",
                get(web_ip, "late"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(0.5)
            assert waiting.poll() is None  # still waiting for the certificate
            resume()
            out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert out == f"echo /late-{MARKER}"
        described = workload(lab, "node-1", "late")
        assert described is not None
        assert described["certificate"] == "issued"

        def late_records() -> list[dict[str, Any]]:
            """Written when the agent has seen the connection close, after curl may have."""
            return [
                r
                for r in access(lab, "node-1")
                if r.get("identity") == f"{TRUST}/ns/{NAMESPACE}/sa/late"
                and r["direction"] == "outbound"
            ]

        late = wait_for("the late pod's access record", late_records, 20)
        assert [(r["route"], r["result"], r["peer_identity"]) for r in late] == [
            ("tunnel", "ok", f"{TRUST}/ns/{NAMESPACE}/sa/web")
        ]
