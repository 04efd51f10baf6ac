"""Operating policy in a lab: `policy explain` agrees with the agents, `lab policy` installs a
file (or refuses a bad one before touching any agent), `status` shows what each agent holds.

One lab and one set of servers for the module (the tests run in order: the first explains
the policy the lab was brought up with, the next install others).
"""

from __future__ import annotations

import collections.abc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smesh.agent import client
from smesh.lab.agents import DEBUG_PORT
from tests.integration.labkit import Lab, smesh, unique_name

FIRST = """
default: allow
rules:
  - name: no-pod1-to-pod3
    action: deny
    from: [{identity: "spiffe://cluster.local/ns/default/sa/pod-1"}]
    to: [{pod: pod-3}]
  - name: shop-to-payments
    action: allow
    from: [{namespace: shop}]
    to: [{namespace: payments}]
    ports: [8080]
"""
SECOND = """
default: deny
rules:
  - name: pod1-to-pod3
    action: allow
    from: [{identity: "spiffe://cluster.local/ns/default/sa/pod-1"}]
    to: [{pod: pod-3}]
"""
# Two ports in one process; READY once both listen.
SERVER = """
import http.server, threading
class Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "3"); self.end_headers()
        self.wfile.write(b"ok\\n")
    def log_message(self, *args):
        pass
for port in (8080, 9090):
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("READY", flush=True)
threading.Event().wait()
"""
PODS = ("pod-1", "pod-2", "pod-3", "pod-4")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> collections.abc.Iterator[Lab]:
    policy = tmp_path_factory.mktemp("policy") / "first.yaml"
    policy.write_text(FIRST)
    lab = Lab(unique_name())
    try:
        smesh(
            "lab", "up", "--name", lab.name, "--policy", str(policy),
            "--identity", "pod-2=shop/web", "--identity", "pod-4=payments/api",
        )  # fmt: skip
        for pod in PODS:
            server = lab.spawn(pod, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
            assert server.stdout is not None
            assert server.stdout.readline().strip() == b"READY", pod
        yield lab
    finally:
        lab.stop_background()
        smesh("lab", "down", "--name", lab.name, check=False)


def pods(lab: Lab) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in lab.status()["pods"]}


def connects(lab: Lab, source: str, dest: str, port: int) -> bool:
    ip = pods(lab)[dest]["ip"]
    curl = ["curl", "-sS", "-m", "8", "-o", "/dev/null", f"http://{ip}:{port}/"]
    return lab.exec(source, curl).returncode == 0


def explain(lab: Lab, source: str, dest: str, port: int) -> dict[str, Any]:
    pod = pods(lab)[source]
    identity = f"{pod['namespace']}/{pod['service_account']}"
    proc = smesh(
        "policy", "explain", "--lab", lab.name, "--from", identity,
        "--to", f"{dest}:{port}", "-o", "json",
    )  # fmt: skip
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def held(lab: Lab, node: str) -> dict[str, Any]:
    reply = client.get("127.0.0.1", DEBUG_PORT, "/debug/policy", netns=f"{lab.name}.{node}")
    assert reply.status == 200
    return reply.json()  # type: ignore[no-any-return]


def agree(lab: Lab, pairs: list[tuple[str, str, int, str]]) -> None:
    """For each pair (source, destination, port, what decides) explain names what decides,
    and a real connection from the source pod succeeds exactly when explain says allow."""
    found = []
    for source, dest, port, _by in pairs:
        doc = explain(lab, source, dest, port)
        found.append((source, dest, port, doc["decided_by"], doc["allowed"]))
    assert [f[:4] for f in found] == pairs
    connected = [(s, d, p, connects(lab, s, d, p)) for s, d, p, _by in pairs]
    assert connected == [(s, d, p, allowed) for s, d, p, _by, allowed in found]


def test_explain_agrees_with_what_the_agents_do_for_ten_pairs(lab: Lab) -> None:
    pairs = [
        ("pod-1", "pod-3", 8080, "no-pod1-to-pod3"),  # deny rule
        ("pod-2", "pod-3", 8080, "(default)"),  # default allow
        ("pod-4", "pod-3", 9090, "(default)"),
        ("pod-2", "pod-4", 8080, "shop-to-payments"),  # allow rule
        ("pod-2", "pod-4", 9090, "(allow-list)"),  # allow-listed: another port
        ("pod-1", "pod-4", 8080, "(allow-list)"),  # allow-listed: another source
        ("pod-3", "pod-4", 8080, "(allow-list)"),  # same node
        ("pod-3", "pod-1", 8080, "(default)"),
        ("pod-4", "pod-2", 9090, "(default)"),
        ("pod-1", "pod-2", 8080, "(default)"),  # same node
    ]
    agree(lab, pairs)
    assert {by for *_, by in pairs} == {
        "no-pod1-to-pod3",
        "(default)",
        "shop-to-payments",
        "(allow-list)",
    }


def test_lab_policy_installs_a_file_every_agent_loads_and_traffic_follows(
    lab: Lab, tmp_path: Path
) -> None:
    path = tmp_path / "second.yaml"
    path.write_text(SECOND)
    proc = smesh("lab", "policy", "--lab", lab.name, str(path), "-o", "json")
    doc = json.loads(proc.stdout)
    assert [(a["node"], a["loaded"], a["digest"]) for a in doc["agents"]] == [
        ("node-1", True, doc["digest"]),
        ("node-2", True, doc["digest"]),
    ]
    for node in ("node-1", "node-2"):
        assert held(lab, node)["digest"] == doc["digest"]
    agree(
        lab,
        [
            ("pod-1", "pod-3", 8080, "pod1-to-pod3"),
            ("pod-2", "pod-3", 8080, "(allow-list)"),
            ("pod-3", "pod-1", 8080, "(default)"),
        ],
    )


def test_lab_policy_refuses_a_bad_file_before_touching_any_agent(lab: Lab, tmp_path: Path) -> None:
    before = {node: held(lab, node) for node in ("node-1", "node-2")}
    path = tmp_path / "bad.yaml"
    path.write_text("rules: [{name: x, action: deny, form: [{namespace: shop}]}]\n")
    proc = smesh("lab", "policy", "--lab", lab.name, str(path), check=False)
    assert proc.returncode != 0
    assert proc.stderr == (
        f"smesh: error: {path}: rules[0].form: unknown field (did you mean 'from'?)\n"
    )
    for node, doc in before.items():
        now = held(lab, node)
        assert (now["digest"], now["reloads"]) == (doc["digest"], doc["reloads"])  # untouched
    assert connects(lab, "pod-1", "pod-3", 8080)  # the second policy still holds
    assert not connects(lab, "pod-2", "pod-3", 8080)


def test_status_shows_each_agents_policy_and_a_refused_reload(lab: Lab) -> None:
    installed = Path(f"/run/smesh/labs/{lab.name}/policy.yaml")
    digest = held(lab, "node-2")["digest"]
    text = smesh("status", "--lab", lab.name).stdout
    for node in ("node-1", "node-2"):
        assert f"  {node}: {installed} {digest[:19]}, 1 rule, default deny, loaded " in text
    assert "last refused reload" not in text

    installed.write_text("rules: [{name: b, action: perhaps}]\n")  # broken after install
    before = held(lab, "node-2")["reloads"]
    pid = next(n["agent_pid"] for n in lab.status()["nodes"] if n["name"] == "node-2")
    os.kill(pid, signal.SIGHUP)
    for _ in range(100):
        if held(lab, "node-2")["reloads"] > before:
            break
        subprocess.run(["sleep", "0.1"], check=True)
    proc = smesh("status", "--lab", lab.name)
    error = f"{installed}: rules[0].action: Input should be 'allow' or 'deny'"
    assert "last refused reload " in proc.stdout
    assert f": {error} (the policy above stays in force)" in proc.stdout
    [one, two] = json.loads(smesh("status", "--lab", lab.name, "--json").stdout)
    assert one["policy"]["last_refused"] is None
    assert two["policy"]["last_refused"]["error"] == error
    assert two["policy"]["digest"] == digest  # the old policy stays
    assert connects(lab, "pod-1", "pod-3", 8080)
    assert not connects(lab, "pod-2", "pod-3", 8080)
