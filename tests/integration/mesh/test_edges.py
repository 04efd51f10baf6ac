"""The mesh's edges, attacked from a pod: link-local neighbours, oversized CONNECT heads and
a flood of the node's admin port. Each is refused or bounded, and the agent keeps serving.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from smesh.agent import client
from smesh.lab import state
from smesh.lab.agents import admin_port, node_dir
from smesh.linux import cgroups
from tests.integration.labkit import Lab, LabFactory, smesh
from tests.integration.mesh.test_adversarial import credential, lab_ca

PY = sys.executable
HERE = Path(__file__).parent
PEER = str(HERE.parent / "capture" / "peer.py")
FLOOD = str(HERE / "connect_flood.py")
POD3 = "198.18.2.2"


def node_netns(lab: Lab, name: str) -> str:
    return str(next(n for n in lab.status()["nodes"] if n["name"] == name)["netns"])


def admin(lab: Lab, node: str, path: str, timeout: float = 3.0) -> client.AdminReply:
    port = admin_port(path)
    return client.get("127.0.0.1", port, path, netns=node_netns(lab, node), timeout=timeout)


def metric(lab: Lab, node: str, name: str, labels: str) -> float:
    body = admin(lab, node, "/metrics").body.decode()
    match = re.search(rf"^{name}\{{{labels}\}} (\S+)$", body, re.M)
    return float(match.group(1)) if match else 0.0


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not met within {timeout} s")


def run_peer(lab: Lab, member: str, *args: object) -> dict[str, Any]:
    proc = lab.exec(member, [PY, PEER, *map(str, args)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- IPv6 link-local ---------------------------------------------------------------------


def link_local(lab: Lab, member: str) -> str:
    """*member*'s link-local address on eth0, once duplicate address detection is over."""
    found: list[str] = []

    def usable() -> bool:
        proc = lab.exec(member, ["ip", "-j", "-6", "addr", "show", "dev", "eth0"])
        found.extend(
            a["local"]
            for a in json.loads(proc.stdout or "[{}]")[0].get("addr_info", [])
            if a.get("scope") == "link" and not a.get("tentative")
        )
        return bool(found)

    wait_for(usable, what=f"{member}'s link-local address")
    return found[0]


def unmesh(lab: Lab, pod: str) -> None:
    """Take *pod* out of the mesh in the workload source, as the Kubernetes API would."""
    path = state.workloads_dir(lab.name) / f"{pod}.json"
    doc = json.loads(path.read_text())
    doc["meshed"] = False
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def captured_count(lab: Lab, pod: str) -> int:
    status = json.loads(smesh("capture", "status", "--lab", lab.name, "--json").stdout)
    for node in status["nodes"]:
        for entry in node["pods"]:
            if entry["name"] == pod:
                return int(entry["captured"])
    raise AssertionError(f"{pod} is not captured")


@pytest.mark.parametrize("non_meshed", ["deny", "passthrough"])
def test_a_link_local_neighbour_is_captured_and_routed_as_non_meshed(
    lab_factory: LabFactory, non_meshed: str
) -> None:
    lab = lab_factory("--nodes", "1", "--agent-set", f"nonMeshed={non_meshed}")
    # pod-2 leaves the mesh: a plain neighbour on pod-1's bridge, the way around
    # `nonMeshed: deny` the attack trial found.
    unmesh(lab, "pod-2")
    lab.spawn("pod-2", [PY, PEER, "serve", "pod-2", "8080"])
    neighbour = link_local(lab, "pod-2")
    # Control: from the node (never captured) the neighbour answers on its link-local address.
    wait_for(
        lambda: (
            run_peer(lab, "node-1", "tcp", f"{neighbour}%br0", 8080).get("reply") == "DIRECT pod-2"
        ),
        what="pod-2 reachable in plain text from node-1",
    )
    before = captured_count(lab, "pod-1")
    result = run_peer(lab, "pod-1", "tcp", f"{neighbour}%eth0", 8080)
    assert captured_count(lab, "pod-1") == before + 1  # the trace/counters show the capture
    if non_meshed == "deny":
        assert not result["ok"], result
        assert result.get("reply") != "DIRECT pod-2"
        wait_for(
            lambda: (
                metric(
                    lab,
                    "node-1",
                    "smesh_connections_closed_total",
                    'direction="outbound",result="denied"',
                )
                >= 1
            ),
            what="the refusal counted",
        )
    else:
        # Passthrough dials it with pod-1's own interface as the scope.
        assert result.get("reply") == "DIRECT pod-2", result


# -- CONNECT head limit ------------------------------------------------------------------

ONE_RECORD_CLIENT = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
sock = ctx.wrap_socket(socket.create_connection((sys.argv[3], 18001), timeout=10))
target = f"{sys.argv[3]}:8080"
head = f"CONNECT {target} HTTP/1.1\\r\\nhost: {target}\\r\\nx-pad: {'a' * 9000}\\r\\n\\r\\n"
sock.sendall(head.encode())  # one write under 16 KiB: one TLS record
answer = b""
while b"\\r\\n" not in answer:
    chunk = sock.recv(4096)
    if not chunk:
        break
    answer += chunk
print(answer.decode("latin-1").split("\\r\\n")[0])
"""


def test_a_9kb_connect_head_in_one_tls_record_gets_431(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory("--agent-set", "timeouts.request=2s")
    lab.spawn("pod-3", [PY, "-m", "http.server", "8080", "--directory", "/etc"])
    lab.wait_tcp("pod-1", POD3, 8080)
    cert, key = credential(tmp_path, lab_ca(lab), "pod-1")  # pod-1's own identity
    proc = lab.exec("pod-1", [PY, "-c", ONE_RECORD_CLIENT, cert, key, POD3], timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("HTTP/1.1 431 "), proc.stdout
    log = node_dir(lab.name, "node-2") / "agent.log"
    wait_for(lambda: "larger than the 8192 allowed" in log.read_text(), what="a log line")
    page = lab.exec("pod-1", ["curl", "-sS", "-m", "8", f"http://{POD3}:8080/hostname"])
    assert page.returncode == 0, f"the mesh stopped serving: {page.stderr}"


# -- admin flood -------------------------------------------------------------------------


def agent_pid(lab: Lab, node: str) -> int:
    procs = cgroups.v2_root() / f"smesh-lab-{lab.name}" / node / "agent" / "cgroup.procs"
    return int(procs.read_text().split()[0])


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_an_admin_flood_from_a_pod_leaves_descriptors_bounded_and_healthz_answering(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory("--nodes", "1", "--pods-per-node", "1")
    pid = agent_pid(lab, "node-1")
    baseline = descriptors(pid)
    # Two processes of 10,000 each: a pod's processes may not hold 20,000 descriptors.
    floods = [
        lab.spawn(
            "pod-1",
            [PY, FLOOD, "198.18.1.1", "15020", "10000", "3", str(20000 + 10000 * i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    peak, answers = baseline, []
    deadline = time.monotonic() + 120
    next_probe = time.monotonic() + 1
    while any(f.poll() is None for f in floods) and time.monotonic() < deadline:
        peak = max(peak, descriptors(pid))
        if time.monotonic() >= next_probe:  # a fresh client: the node's own probe
            answers.append(admin(lab, "node-1", "/healthz", timeout=10).status)
            next_probe = time.monotonic() + 1
        time.sleep(0.05)
    attempted = 0
    for flood in floods:
        assert flood.poll() is not None, "the flood did not finish in time"
        assert flood.stdout is not None
        summary = json.loads(flood.stdout.read().strip().splitlines()[-1])
        attempted += summary["attempted"]
    assert attempted == 20000
    assert answers
    assert set(answers) == {200}, answers
    assert admin(lab, "node-1", "/healthz").status == 200
    # The cap (64) plus room for connections being closed; it reached 8,328 before.
    assert peak - baseline < 200, (baseline, peak)
    refused = sum(
        metric(
            lab,
            "node-1",
            "smesh_admin_connections_refused_total",
            f'listener="scrape",reason="{r}"',
        )
        for r in ("at_cap", "peer_cap")
    )
    print(f"flood: descriptors {baseline} -> peak {peak}, refused {refused:.0f}, {answers=}")
    assert refused > 1000, refused
