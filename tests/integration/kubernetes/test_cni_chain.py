"""smesh-cni in the real plugin chain, run exactly as a container runtime runs it.

Debian's bridge plugin (with host-local as its IPAM) wires a fresh pod netns to a lab node's
``br0``, then ``.venv/bin/smesh-cni`` gets the bridge's result as ``prevResult``. The plugins
run inside the lab node's netns (``ip netns exec``), because the bridge plugin creates its
interfaces wherever it runs. The agent's side of the hand-off belongs to the agent; here the
socket is served by a small server that answers as :mod:`smesh.kubernetes.handoff` says, so
these tests check the plugin's side of the protocol: what it sends, and what it prints for
each answer (or for no answer at all).
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smesh.httpserver import HttpServer, Request, Response
from smesh.kubernetes import handoff
from tests.integration.labkit import Lab, LabFactory

CNI_BIN = Path("/usr/lib/cni")
SMESH_CNI = Path(sys.executable).parent / "smesh-cni"
#: Inside node-1's pod CIDR 198.18.1.0/24, far above the lab's static pods (.2, .3, ...).
RANGE_START, RANGE_END = "198.18.1.200", "198.18.1.219"

pytestmark = pytest.mark.skipif(
    not (CNI_BIN / "bridge").exists() or not SMESH_CNI.exists(),
    reason="needs Debian's containernetworking-plugins and `make setup` (smesh-cni)",
)


@dataclass
class Chain:
    """A runtime's view of one conflist: bridge (+ host-local) then smesh-cni.

    Like libcni it gives every plugin the list's name and cniVersion, passes each ADD result
    on as the next plugin's ``prevResult``, stops at the first failure, runs DEL in reverse
    with the ADD's result, and after a failed ADD runs DEL for the whole list.
    """

    node_netns: str
    sock: Path
    data_dir: Path
    timeout: float = 10
    name: str = field(default_factory=lambda: f"smesh-test-{secrets.token_hex(3)}")
    cached: dict[str, Any] | None = None

    def plugins(self) -> list[dict[str, Any]]:
        bridge = {
            "type": "bridge",
            "bridge": "br0",
            "isGateway": False,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.data_dir),
                "ranges": [
                    [
                        {
                            "subnet": "198.18.1.0/24",
                            "rangeStart": RANGE_START,
                            "rangeEnd": RANGE_END,
                            "gateway": "198.18.1.1",
                        }
                    ]
                ],
            },
        }
        smesh = {"type": "smesh-cni", "agentSocket": str(self.sock), "timeoutSeconds": self.timeout}
        return [bridge, smesh]

    def exec(
        self, plugin: dict[str, Any], command: str, sandbox: Sandbox, prev: dict[str, Any] | None
    ) -> subprocess.CompletedProcess[str]:
        conf = {"cniVersion": "1.0.0", "name": self.name, **plugin}
        if prev is not None:
            conf["prevResult"] = prev
        binary = SMESH_CNI if plugin["type"] == "smesh-cni" else CNI_BIN / plugin["type"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": sandbox.container_id,
            "CNI_NETNS": sandbox.netns_path,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(CNI_BIN),
            "CNI_ARGS": sandbox.cni_args,
        }
        return subprocess.run(
            ["ip", "netns", "exec", self.node_netns, str(binary)],
            input=json.dumps(conf),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add(self, sandbox: Sandbox) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """(each plugin's printed JSON, the CNI error if one failed)."""
        outputs: list[dict[str, Any]] = []
        prev: dict[str, Any] | None = None
        for plugin in self.plugins():
            proc = self.exec(plugin, "ADD", sandbox, prev)
            printed = json.loads(proc.stdout) if proc.stdout.strip() else {}
            outputs.append(printed)
            if proc.returncode != 0:
                self.delete(sandbox)  # what a runtime does after a failed ADD
                return outputs, printed
            prev = printed
        self.cached = prev
        return outputs, None

    def check(self, sandbox: Sandbox) -> list[subprocess.CompletedProcess[str]]:
        return [self.exec(p, "CHECK", sandbox, self.cached) for p in self.plugins()]

    def delete(self, sandbox: Sandbox) -> list[subprocess.CompletedProcess[str]]:
        """DEL in reverse order, stopping at the first failure as the spec says."""
        done = []
        for plugin in reversed(self.plugins()):
            done.append(self.exec(plugin, "DEL", sandbox, self.cached))
            if done[-1].returncode != 0:
                break
        return done


@dataclass(frozen=True)
class Sandbox:
    netns: str
    container_id: str
    namespace: str = "shop"
    pod: str = "web-1"
    uid: str = "0b6f3c4e-8a55-4a9e-9f60-2d4f5c7a1b10"

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def cni_args(self) -> str:
        return (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={self.pod};"
            f"K8S_POD_INFRA_CONTAINER_ID={self.container_id};K8S_POD_UID={self.uid}"
        )


class HandoffServer:
    """The agent's end of the socket, as handoff.py defines it, in a thread of the test.

    It answers ADD with *add_status* and everything else with 200, each with a
    :class:`~handoff.SandboxReply`, and keeps each request it decoded.
    """

    def __init__(self, path: Path, add_status: int = 200, message: str = "") -> None:
        self.path = path
        self.add_status = add_status
        self.message = message
        self.requests: list[tuple[str, handoff.SandboxRequest]] = []
        self._loop = asyncio.new_event_loop()
        self._server = HttpServer(self._handle, max_body=65536)
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _handle(self, request: Request) -> Response:
        sandbox = handoff.decode_request(request.body)
        self.requests.append((request.path, sandbox))
        reply = handoff.SandboxReply(pod=sandbox.pod, meshed=True, message=self.message)
        status = self.add_status if request.path == handoff.Command.ADD.path else 200
        return Response(status, handoff.encode(reply), "application/json")

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(
            self._server.start_unix(str(self.path)), self._loop
        ).result(10)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._server.close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def node(lab_factory: LabFactory) -> Lab:
    return lab_factory("--no-mesh", "--nodes", "1", "--pods-per-node", "1")


@pytest.fixture
def sandbox(node: Lab) -> collections.abc.Iterator[Sandbox]:
    """A pod netns of the lab (so `lab down` would remove it too), removed by the test."""
    name = f"{node.name}.cni-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield Sandbox(netns=name, container_id=secrets.token_hex(32))
    finally:
        # Deleting the netns deletes the veth pair the bridge plugin made, whatever happened.
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def chain(node: Lab, tmp_path: Path) -> collections.abc.Iterator[Chain]:
    chain = Chain(f"{node.name}.node-1", tmp_path / "cni.sock", tmp_path / "ipam")
    try:
        yield chain
    finally:
        shutil.rmtree(chain.data_dir, ignore_errors=True)


def allocated(chain: Chain) -> list[str]:
    """The IPs host-local holds for this network."""
    network = chain.data_dir / chain.name
    if not network.exists():
        return []
    return sorted(p.name for p in network.iterdir() if p.name[0].isdigit())


def node_links(chain: Chain) -> set[str]:
    out = subprocess.run(
        ["ip", "-n", chain.node_netns, "-j", "link", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {link["ifname"] for link in json.loads(out)}


@contextlib.contextmanager
def serving(server: HandoffServer) -> collections.abc.Iterator[HandoffServer]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_add_hands_the_sandbox_over_and_passes_the_result_on(
    chain: Chain, sandbox: Sandbox
) -> None:
    with serving(HandoffServer(chain.sock)) as agent:
        (bridge, smesh), failure = chain.add(sandbox)
        assert failure is None
        # A chained plugin prints its prevResult: the runtime sees the bridge's result.
        assert smesh == bridge
        pod_ip = ipaddress.ip_interface(bridge["ips"][0]["address"]).ip
        assert [str(pod_ip)] == allocated(chain)
        assert agent.requests == [
            (
                "/v1/sandboxes/add",
                handoff.SandboxRequest(
                    container_id=sandbox.container_id,
                    netns=sandbox.netns_path,
                    if_name="eth0",
                    pod_namespace="shop",
                    pod_name="web-1",
                    pod_uid=sandbox.uid,
                    ips=(pod_ip,),
                ),
            )
        ]

        checks = chain.check(sandbox)
        assert [p.returncode for p in checks] == [0, 0], [p.stdout for p in checks]
        assert agent.requests[-1][0] == "/v1/sandboxes/check"

        # DEL is idempotent: twice, and each time the agent hears of it.
        for _ in range(2):
            dels = chain.delete(sandbox)
            assert [p.returncode for p in dels] == [0, 0], [p.stdout for p in dels]
        assert [path for path, _ in agent.requests[-2:]] == ["/v1/sandboxes/del"] * 2
        assert agent.requests[-1][1].container_id == sandbox.container_id
    assert allocated(chain) == []
    assert bridge["interfaces"][1]["name"] not in node_links(chain)

    # With the agent gone, DEL still succeeds (a restarted agent releases it from the API).
    smesh_del, _ = chain.delete(sandbox)
    assert smesh_del.returncode == 0
    assert "done without the agent" in smesh_del.stderr


def listening_but_silent(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)  # connects are queued; nothing ever answers
    return sock


def bound_not_listening(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))  # the file exists, but a connect is refused
    return sock


@pytest.mark.parametrize(
    ("make_socket", "reason"),
    [
        (None, "no socket there"),
        (bound_not_listening, "connection refused"),
        (listening_but_silent, "no answer within 1 s"),
    ],
    ids=["no-socket", "refused", "silent"],
)
def test_add_fails_closed_naming_the_agent_when_it_does_not_answer(
    chain: Chain, sandbox: Sandbox, make_socket: Any, reason: str
) -> None:
    chain.timeout = 1
    held = make_socket(chain.sock) if make_socket else None
    try:
        outputs, failure = chain.add(sandbox)
    finally:
        if held is not None:
            held.close()
    assert failure is not None, outputs
    assert failure["code"] == 11
    assert failure["msg"].startswith(f"smesh agent on this node is not answering at {chain.sock}")
    assert reason in failure["msg"]
    # The runtime's DEL after the failed ADD left nothing of the sandbox behind.
    assert allocated(chain) == []
    assert outputs[0]["interfaces"][1]["name"] not in node_links(chain)


def test_an_agent_error_fails_add_with_the_agents_message(chain: Chain, sandbox: Sandbox) -> None:
    message = "pod shop/web-1 not meshed within 10s: capture not attached"
    with serving(HandoffServer(chain.sock, add_status=503, message=message)) as agent:
        _, failure = chain.add(sandbox)
        assert [path for path, _ in agent.requests] == ["/v1/sandboxes/add", "/v1/sandboxes/del"]
    assert failure is not None
    assert failure["code"] == 11
    assert failure["msg"] == (
        f"smesh agent at {chain.sock} failed ADD of pod shop/web-1: {message}"
    )
    assert allocated(chain) == []
