"""The CNI hand-off against a real agent process, a real API server and real sandboxes.

The agent runs as ``smesh agent --config`` with a ``kubernetes`` section, in the host
network namespace (the test API server listens on 127.0.0.1 there; the agent's admin ports
are bound to 127.0.0.1, and its pods' listeners live in the sandboxes' own namespaces) and
in a cgroup of its own under a unique ``cgroupRoot``, with its BPF pins in a unique
directory. The test plays the container runtime: it makes the pod's cgroup at the kubelet's
layout path and a network namespace, then sends what smesh-cni sends.
"""

from __future__ import annotations

import asyncio
import collections.abc
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube.resources.core_v1 import Pod

from smesh.agent import client as admin_client
from smesh.capture.ebpf import EbpfCapture
from smesh.identity.ca import CertificateAuthority
from smesh.lab.controlplane import ControlPlane, free_port
from smesh.linux import cgroups
from tests.integration.kubernetes.kubekit import admin, make_namespace, pod, unique
from tests.integration.kubernetes.sandboxkit import (
    Node,
    attached_programs,
    handoff,
    label_namespace,
    label_pod,
    set_status,
    uid_of,
)
from tests.integration.labkit import unique_name


@dataclass
class RunningAgent:
    node: Node
    name: str
    port: int  # the scrape listener's; /debug/* on debug_port
    debug_port: int
    socket: Path
    sandbox_dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cgroup = cgroups.create(self.node.cgroup_root / "agent")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smesh", "agent", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: cgroups.join(cgroup),  # noqa: PLW1509 - no threads here
            )
        deadline = time.monotonic() + 60
        while not self.socket.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the agent did not come up:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, by pid; the socket goes with the agent."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def get(self, path: str) -> admin_client.AdminReply:
        port = self.debug_port if path.startswith("/debug/") else self.port
        return admin_client.get("127.0.0.1", port, path, timeout=10)

    def workloads(self) -> list[dict[str, Any]]:
        doc = self.get("/debug/workloads").json()
        return list(doc["workloads"])

    def workload(self, key: str) -> dict[str, Any] | None:
        return next((w for w in self.workloads() if w["pod"] == key), None)

    def metric(self, line_prefix: str) -> float:
        text = self.get("/metrics").body.decode()
        for line in text.splitlines():
            if line.startswith(line_prefix):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {line_prefix} in:\n{text}")


@pytest.fixture(scope="module")
def agent(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> collections.abc.Iterator[RunningAgent]:
    node = Node()
    state = tmp_path_factory.mktemp("agent")
    pin_dir = Path("/sys/fs/bpf") / unique_name("smesh-test-k8s-")
    CertificateAuthority.init(state / "ca", trust_domain="cluster.local")
    running = RunningAgent(
        node=node,
        name=unique("node"),
        port=free_port(),
        debug_port=free_port(),
        socket=node.short_dir / "cni.sock",
        sandbox_dir=state / "sandboxes",
        config=state / "agent.yaml",
        log=state / "agent.log",
    )
    config = {
        "node": running.name,
        "kubernetes": {
            "kubeconfig": str(control_plane.kubeconfig),
            "cniSocket": str(running.socket),
            "cgroupDriver": "auto",
            "cgroupRoot": node.root,
            "sandboxDir": str(running.sandbox_dir),
            "enrolTimeout": "20s",
        },
        "capture": {"mode": "ebpf", "pinDir": str(pin_dir)},
        "admin": {
            "scrape": {"address": "127.0.0.1", "port": running.port},
            "debug": {"address": "127.0.0.1", "port": running.debug_port},
        },
        "identity": {"caDir": str(state / "ca"), "credentialCache": str(state / "cache")},
        "timeouts": {"drain": "1s"},
        "logging": {"format": "text", "level": "debug"},
    }
    running.config.write_text(yaml.safe_dump(config))
    # detect_driver (cgroupDriver: auto) looks for the kubelet's tree under cgroupRoot.
    cgroups.create(node.cgroup_root / "kubepods")
    try:
        running.start()
        yield running
    finally:
        running.stop()
        with EbpfCapture(pin_dir) as capture:  # the agent leaves capture pinned by design
            capture.detach_all()
        shutil.rmtree(pin_dir, ignore_errors=True)
        node.cleanup()


def request(namespace: str, name: str, uid: str, netns: str, ip: str) -> dict[str, Any]:
    return {
        "containerId": f"c-{uid[:8]}",
        "netns": netns,
        "ifName": "eth0",
        "podNamespace": namespace,
        "podName": name,
        "podUid": uid,
        "ips": [ip],
    }


async def call(agent: RunningAgent, command: str, body: dict[str, Any]) -> tuple[int, Any]:
    return await asyncio.get_running_loop().run_in_executor(
        None, handoff, agent.socket, command, body
    )


def test_add_meshes_the_pod_before_answering_and_del_releases_it(
    control_plane: ControlPlane, agent: RunningAgent
) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns = unique("mesh")
        await make_namespace(client, ns)
        await label_namespace(client, ns, "enabled")
        created = await client.create(pod("web", ns, agent.name))
        uid = uid_of(created)
        # What the runtime has made before it calls the CNI plugins: no podIPs in the API yet.
        cgroup = agent.node.pod_cgroup(uid)
        ip = "198.18.60.1"
        netns = agent.node.sandbox_netns(ip)
        assert attached_programs(cgroup) == []
        body = request(ns, "web", uid, netns, ip)

        status, reply = await call(agent, "add", body)
        assert (status, reply) == (200, {"pod": f"{ns}/web", "meshed": True, "message": ""}), (
            agent.log.read_text()[-3000:]
        )
        # Answered only once capture is attached and the listeners are open:
        attached = attached_programs(cgroup)
        assert {"cgroup_inet4_connect", "cgroup_inet6_connect"} <= set(attached), attached
        (described,) = [w for w in agent.workloads() if w["pod"] == f"{ns}/web"]
        assert (described["stage"], described["uid"]) == ("ready", uid)
        assert (described["netns"], described["cgroup"]) == (netns, str(cgroup))
        assert described["identity"] == f"ns/{ns}/sa/default"
        assert (agent.sandbox_dir / f"{uid}.json").exists()
        assert agent.metric('smesh_cni_requests_total{command="add",result="meshed"}') >= 1
        assert agent.metric('smesh_cni_enrol_duration_seconds_count{result="meshed"}') >= 1
        assert agent.metric('smesh_kubernetes_lists_total{informer="node_pods"}') >= 1

        status, reply = await call(agent, "check", body)
        assert (status, reply["meshed"]) == (200, True)

        status, reply = await call(agent, "del", body)
        assert (status, reply["pod"]) == (200, f"{ns}/web")
        assert attached_programs(cgroup) == []
        assert [w for w in agent.workloads() if w["pod"] == f"{ns}/web"] == []
        assert not (agent.sandbox_dir / f"{uid}.json").exists()
        status, _ = await call(agent, "del", body)  # the runtime may call DEL again
        assert status == 200
        status, reply = await call(agent, "check", body)
        assert status == 500
        assert "no sandbox" in reply["message"]
        await client.close()

    asyncio.run(scenario())


def test_a_burst_of_adds_has_every_pod_answered_meshed_and_captured(
    control_plane: ControlPlane, agent: RunningAgent
) -> None:
    """ADDs that arrive together (a Deployment scaled up) are enrolled one by one, each
    answered once its own pod is captured and listening, none lost or answered early."""
    count = 6

    async def scenario() -> None:
        client = admin(control_plane)
        ns = unique("burst")
        await make_namespace(client, ns)
        await label_namespace(client, ns, "enabled")
        bodies, cgroups_of = [], {}
        for index in range(count):
            name = f"web-{index}"
            uid = uid_of(await client.create(pod(name, ns, agent.name)))
            ip = f"198.18.61.{index + 1}"
            cgroups_of[f"{ns}/{name}"] = agent.node.pod_cgroup(uid)
            bodies.append(request(ns, name, uid, agent.node.sandbox_netns(ip), ip))

        async def add(body: dict[str, Any]) -> tuple[int, Any, set[str]]:
            status, reply = await call(agent, "add", body)
            key = f"{body['podNamespace']}/{body['podName']}"
            # answered only once this pod's capture is attached
            return status, reply, set(attached_programs(cgroups_of[key]))

        answers = await asyncio.gather(*(add(body) for body in bodies))
        for body, (status, reply, attached) in zip(bodies, answers, strict=True):
            key = f"{ns}/{body['podName']}"
            assert (status, reply) == (200, {"pod": key, "meshed": True, "message": ""}), (
                agent.log.read_text()[-3000:]
            )
            assert {"cgroup_inet4_connect", "cgroup_inet6_connect"} <= attached, (key, attached)
        ready = {w["pod"]: w["stage"] for w in agent.workloads() if w["pod"].startswith(ns)}
        assert ready == {key: "ready" for key in cgroups_of}
        for body in bodies:
            status, _ = await call(agent, "del", body)
            assert status == 200
        assert all(attached_programs(cgroup) == [] for cgroup in cgroups_of.values())
        await client.close()

    asyncio.run(scenario())


def test_a_pod_of_a_namespace_not_opted_in_is_answered_not_meshed_and_left_alone(
    control_plane: ControlPlane, agent: RunningAgent
) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns = unique("plain")
        await make_namespace(client, ns)
        uid = uid_of(await client.create(pod("web", ns, agent.name)))
        cgroup = agent.node.pod_cgroup(uid)
        netns = agent.node.sandbox_netns("198.18.60.2")
        body = request(ns, "web", uid, netns, "198.18.60.2")

        status, reply = await call(agent, "add", body)
        assert (status, reply["meshed"]) == (200, False)
        assert "not labelled smesh.io/mesh=enabled" in reply["message"]
        await asyncio.sleep(0.5)  # time for a wrong capture to show
        assert attached_programs(cgroup) == []
        assert [w for w in agent.workloads() if w["pod"] == f"{ns}/web"] == []
        status, _ = await call(agent, "del", body)
        assert status == 200
        await client.close()

    asyncio.run(scenario())


def test_bad_requests_are_400_naming_the_field_and_the_agent_keeps_serving(
    agent: RunningAgent,
) -> None:
    async def scenario() -> None:
        uid = "00000000-0000-4000-8000-000000000002"
        base = request("ns", "web", uid, "/run/netns/smk-none", "198.18.60.3")
        status, reply = await call(agent, "add", {**base, "podUid": ""})
        assert (status, reply["message"]) == (
            400,
            "podUid: required for ADD (CNI_ARGS K8S_POD_*, CNI_NETNS)",
        )
        status, reply = await call(agent, "add", base)
        assert status == 400
        assert re.match(r"netns: '/run/netns/smk-none' does not exist", reply["message"])
        status, reply = await call(agent, "add", {**base, "ips": ["x"]})
        assert status == 400
        assert reply["message"].startswith("invalid sandbox request: ips[0]")
        assert agent.get("/healthz").status == 200

    asyncio.run(scenario())


def test_a_restarted_agent_meshes_its_running_pods_again_without_the_cni(
    control_plane: ControlPlane, agent: RunningAgent
) -> None:
    """One pod enrolled through the CNI (its record persisted), one that never was (its
    sandbox is found from the process running in its cgroup): both meshed after a restart."""

    async def scenario() -> None:
        client = admin(control_plane)
        ns = unique("mesh")
        await make_namespace(client, ns)
        await label_namespace(client, ns, "enabled")
        recorded = uid_of(await client.create(pod("recorded", ns, agent.name)))
        netns = agent.node.sandbox_netns("198.18.60.4")
        agent.node.pod_cgroup(recorded)
        status, _ = await call(
            agent, "add", request(ns, "recorded", recorded, netns, "198.18.60.4")
        )
        assert status == 200
        await set_status(client, "recorded", ns, ["198.18.60.4"])

        agent.stop()
        # A pod started while no agent ran (its CNI ADD would have failed: say the runtime
        # did not call smesh-cni at all): its app runs in its netns and cgroup.
        found = uid_of(await client.create(pod("found", ns, agent.name)))
        found_cgroup = agent.node.pod_cgroup(found)
        found_netns = agent.node.sandbox_netns("198.18.60.5")
        name = found_netns.removeprefix("/run/netns/")
        app = agent.node.spawn_in(found_cgroup, ["ip", "netns", "exec", name, "sleep", "120"])
        try:
            await set_status(client, "found", ns, ["198.18.60.5"])
            agent.start()
            deadline = time.monotonic() + 30
            while not all(
                (w := agent.workload(f"{ns}/{p}")) is not None and w["stage"] == "ready"
                for p in ("recorded", "found")
            ):
                assert time.monotonic() < deadline, agent.workloads()
                await asyncio.sleep(0.1)
            assert agent.workload(f"{ns}/recorded")["netns"] == netns  # type: ignore[index]
            assert agent.workload(f"{ns}/found")["netns"] == f"/proc/{app.pid}/ns/net"  # type: ignore[index]
            assert "cgroup_inet4_connect" in attached_programs(found_cgroup)
        finally:
            app.kill()
            app.wait()
            await client.close()

    asyncio.run(scenario())


def test_labels_flipped_live_release_and_mesh_a_running_pod_again(
    control_plane: ControlPlane, agent: RunningAgent
) -> None:
    async def scenario() -> None:
        client = admin(control_plane)
        ns = unique("mesh")
        await make_namespace(client, ns)
        await label_namespace(client, ns, "enabled")
        uid = uid_of(await client.create(pod("web", ns, agent.name)))
        cgroup = agent.node.pod_cgroup(uid)
        netns = agent.node.sandbox_netns("198.18.60.6")
        status, _ = await call(agent, "add", request(ns, "web", uid, netns, "198.18.60.6"))
        assert status == 200

        async def captured(expected: bool) -> None:
            deadline = time.monotonic() + 30
            while ("cgroup_inet4_connect" in attached_programs(cgroup)) != expected:
                assert time.monotonic() < deadline, f"capture never became {expected}"
                await asyncio.sleep(0.05)

        await captured(True)
        await label_namespace(client, ns, None)
        await captured(False)
        await label_namespace(client, ns, "enabled")
        await captured(True)
        await label_pod(client, "web", ns, "disabled")
        await captured(False)
        assert agent.workload(f"{ns}/web") is None
        await label_pod(client, "web", ns, None)
        await captured(True)
        # A forced deletion: the pod's apps may still run until the runtime tears the
        # sandbox down, so it stays captured until the CNI DEL.
        await client.delete(Pod, "web", namespace=ns, grace_period=0)
        await asyncio.sleep(1)  # the agent has seen the deletion
        await captured(True)
        body = request(ns, "web", uid, netns, "198.18.60.6")
        status, _ = await call(agent, "del", body)
        assert status == 200
        await captured(False)
        await client.close()

    asyncio.run(scenario())
