"""The agent's bookkeeping when steps fail or overlap; the real steps are in the lab tests.

The wiring and capture here are stand-ins for the certificate, listener and BPF steps
(which need root and a lab): what is checked is the order the agent runs them in and what
it leaves behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smesh.agent import client, handover, node, pods
from smesh.agent.config import AgentConfig
from smesh.agent.node import Agent
from smesh.agent.pods import PodRuntime
from smesh.agent.wiring import MeshWiring, certificate_source
from smesh.agent.workloads import DirectorySource, Snapshot, Workload, write
from smesh.errors import SmeshError
from smesh.identity.ca import CertificateAuthority
from smesh.identity.errors import SignerUnavailable
from smesh.kubernetes.sandboxes import wait_until

POD = Workload(
    name="pod-1", node="node-1", ips=("198.18.1.2",), netns="x", cgroup=Path("/sys/fs/cgroup/x")
)


class Listeners:
    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring
        wiring.open_listeners += 1

    def stop_accepting(self) -> None:
        pass

    def active_connections(self) -> int:
        return 0

    def connections(self) -> list[dict[str, Any]]:
        return []

    async def close(self) -> None:
        self.wiring.open_listeners -= 1


class Wiring:
    """Certificates and listeners, counted; *failures* are raised by successive issues."""

    def __init__(self, *failures: BaseException, issue_delay: float = 0.0) -> None:
        self.failures = list(failures)
        self.issue_delay = issue_delay
        self.certificate_users = 0
        self.open_listeners = 0
        self.kept: list[str] | None = None  # what forget_others was told to keep

    async def start(self, agent: Agent) -> None:
        pass

    async def stop(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def workloads_changed(self, snapshot: Snapshot) -> None:
        pass

    async def issue(self, workload: Workload) -> float:
        if self.failures:
            raise self.failures.pop(0)
        await asyncio.sleep(self.issue_delay)
        self.certificate_users += 1
        return 0.0

    def release(self, workload: Workload) -> None:
        self.certificate_users -= 1

    def forget_others(self, keep: list[Workload]) -> None:
        self.kept = sorted(w.key for w in keep)

    async def listen(self, workload: Workload) -> Listeners:
        return Listeners(self)


@dataclass(frozen=True)
class Pinned:
    pod_id: str


class Capture:
    def __init__(self) -> None:
        self.captured: set[str] = set()
        self.removed: list[str] = []  # every remove_pod, in order
        self.detached = False
        self.closed = False

    def add_pod(self, key: str, *args: object, **kwargs: object) -> None:
        self.captured.add(key)

    def remove_pod(self, key: str) -> bool:
        self.captured.discard(key)
        self.removed.append(key)
        return True

    def pods(self) -> list[Any]:
        return [Pinned(key) for key in sorted(self.captured)]

    def detach_all(self) -> None:
        self.detached = True
        self.captured.clear()

    def close(self) -> None:
        self.closed = True


def agent_with(wiring: Wiring, tmp_path: Path, **config: Any) -> tuple[Agent, Capture]:
    cfg = AgentConfig(node="node-1", workloads=tmp_path / "workloads", **config)
    agent = Agent(cfg, wiring)  # type: ignore[arg-type]
    capture = Capture()
    agent.capture = capture  # type: ignore[assignment]
    return agent, capture


async def until_ready(agent: Agent, timeout: float = 2.0) -> None:
    """Until every pod holds its certificate: it comes beside the pod's start, a few turns
    of the loop after the reconcile that started the pod."""
    deadline = time.monotonic() + timeout
    while not agent.ready() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node, "RETRY_INTERVAL", 0.05)
    monkeypatch.setattr(pods, "CERTIFICATE_RETRY", 0.05, raising=False)


def test_a_pod_deleted_while_its_certificate_is_on_the_way_is_not_meshed(tmp_path: Path) -> None:
    wiring = Wiring(SmeshError("signing service did not answer"), issue_delay=0.3)
    agent, capture = agent_with(wiring, tmp_path)

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))
        await asyncio.sleep(0.01)
        pod = agent.pods[POD.key]
        assert pod.certificate_error == "signing service did not answer"
        assert pod.ready  # enrolled (captured, listening)...
        assert not agent.ready()  # ...not yet serving
        retry = asyncio.create_task(agent._retry_failed())
        await asyncio.sleep(0.15)  # the retry now waits for the signer
        await agent.reconcile(Snapshot({}))  # the pod is deleted meanwhile
        await asyncio.sleep(0.4)  # the certificate arrives
        retry.cancel()

    asyncio.run(scenario())
    assert capture.captured == set()
    assert wiring.certificate_users == 0
    assert wiring.open_listeners == 0


def test_an_unexpected_error_meshing_a_pod_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wiring = Wiring(RuntimeError("a bug"))
    agent, capture = agent_with(wiring, tmp_path)

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))
        assert not agent.ready()
        retry = asyncio.create_task(agent._retry_failed())
        for _ in range(100):  # up to 5 s: the retry comes at once, but a loaded machine lags
            await asyncio.sleep(0.05)
            if agent.ready():
                break
        retry.cancel()

    asyncio.run(scenario())
    assert agent.ready()
    assert capture.captured == {POD.key}
    [failure] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "no certificate for the pod yet" in failure.getMessage()
    assert failure.exc_info is not None  # with the traceback: it is a bug to report


def test_an_unreadable_workloads_directory_keeps_the_pods_it_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "workloads"
    write(directory, POD)
    source = DirectorySource(directory)
    assert POD.key in source.scan().workloads
    directory.rename(tmp_path / "moved")
    directory.write_text("a file where the directory was\n")
    assert POD.key in source.scan().workloads
    assert POD.key in source.scan().workloads
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors  # said once, not every poll
    assert "cannot read the workloads directory" in errors[0]


def test_healthz_fails_once_a_task_the_agent_lives_on_has_died_and_sigterm_still_cleans_up(
    tmp_path: Path,
) -> None:
    agent, capture = agent_with(Wiring(), tmp_path, admin=admin_on_loopback())
    agent._open_capture = lambda: None  # type: ignore[method-assign]

    async def broken_watch() -> None:
        raise RuntimeError("a bug in the workload watch")

    agent._watch = broken_watch  # type: ignore[method-assign]

    async def scenario() -> tuple[int, bytes]:
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(0.2)
        status, body = agent._healthz().status, agent._healthz().body
        agent._stopping.set()  # what SIGTERM does
        assert await running == 0
        return status, body

    status, body = asyncio.run(scenario())
    assert status == 500
    assert b"a bug in the workload watch" in body
    assert capture.closed  # the clean shutdown ran despite the dead task
    assert not capture.detached  # ...and left capture in place, as every stop does


def test_a_stopping_agent_closes_its_listeners_but_keeps_capture_and_certificates(
    tmp_path: Path,
) -> None:
    wiring = Wiring()
    agent, capture = agent_with(wiring, tmp_path, timeouts={"drain": 0.1})

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))
        await until_ready(agent)
        assert agent.ready()
        await agent._shutdown()

    asyncio.run(scenario())
    assert capture.captured == {POD.key}  # fail closed until the next agent, never open
    assert not capture.detached
    assert capture.closed
    assert wiring.open_listeners == 0
    assert wiring.certificate_users == 1  # not released: its cached copy serves a restart


def test_a_pinned_pod_waiting_for_its_certificate_stays_captured_until_it_leaves_the_mesh(
    tmp_path: Path,
) -> None:
    other = Workload(
        name="pod-2", node="node-1", ips=("198.18.1.3",), netns="y", cgroup=Path("/x/y")
    )
    wiring = Wiring(SignerUnavailable("signing service did not answer"))
    agent, capture = agent_with(wiring, tmp_path)
    capture.captured = {POD.key, other.key}  # pinned by the agent that stopped

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))  # pod-2 left while no agent ran
        assert not agent.pods[POD.key].issued
        assert capture.captured == {POD.key}  # still captured: refused, not plain text
        assert wiring.kept == [POD.key]  # pod-2's cached certificate is forgotten
        await agent.reconcile(Snapshot({}))  # pod-1 leaves the mesh before it is served

    asyncio.run(scenario())
    assert capture.captured == set()  # released although this agent never captured it


class CachingWiring(Wiring):
    """Like the certificate manager with its cache: the last release drops the cached
    certificate, and with the signer down only a held or cached certificate serves."""

    def __init__(self) -> None:
        super().__init__()
        self.signer_down = False
        self.cached = False

    async def issue(self, workload: Workload) -> float:
        if self.signer_down and not self.certificate_users and not self.cached:
            raise SignerUnavailable("signing service did not answer")
        self.certificate_users += 1
        self.cached = True
        return 0.0

    def release(self, workload: Workload) -> None:
        super().release(workload)
        if not self.certificate_users:
            self.cached = False


def test_a_meshed_pod_whose_workload_changes_during_a_signer_outage_stays_served(
    tmp_path: Path,
) -> None:
    wiring = CachingWiring()
    agent, capture = agent_with(wiring, tmp_path)
    moved = Workload.model_validate({**POD.model_dump(), "ips": ("198.18.1.9",)})  # same key

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))
        await until_ready(agent)
        assert agent.ready()
        wiring.signer_down = True
        await agent.reconcile(Snapshot({moved.key: moved}))

    asyncio.run(scenario())
    assert agent.pods[POD.key].workload == moved
    assert agent.ready()  # served by the certificate it already had
    assert capture.removed == []  # never released: no plain-text window
    assert capture.captured == {POD.key}
    assert (wiring.certificate_users, wiring.cached) == (1, True)
    assert wiring.open_listeners == 1


def test_a_pinned_pod_waiting_for_its_certificate_stays_captured_when_its_workload_changes(
    tmp_path: Path,
) -> None:
    wiring = CachingWiring()
    wiring.signer_down = True
    agent, capture = agent_with(wiring, tmp_path)
    capture.captured = {POD.key}  # pinned by the agent that stopped
    moved = Workload.model_validate({**POD.model_dump(), "ips": ("198.18.1.9",)})

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))
        assert not agent.pods[POD.key].issued
        await agent.reconcile(Snapshot({moved.key: moved}))
        assert not agent.pods[POD.key].issued
        assert capture.captured == {POD.key}  # still fails closed, never open
        assert capture.removed == []
        wiring.signer_down = False
        retry = asyncio.create_task(agent._retry_failed())
        for _ in range(100):  # up to 5 s: the retry comes at once, but a loaded machine lags
            await asyncio.sleep(0.05)
            if agent.ready():
                break
        retry.cancel()
        assert agent.ready()
        await agent.reconcile(Snapshot({}))  # now it leaves the mesh

    asyncio.run(scenario())
    assert capture.removed == [POD.key]
    assert capture.captured == set()
    assert (wiring.certificate_users, wiring.cached) == (0, False)
    assert wiring.open_listeners == 0


def test_the_old_runtime_of_a_replaced_pod_leaves_the_new_ones_namespace_open(
    tmp_path: Path,
) -> None:
    wiring = MeshWiring(AgentConfig(node="node-1", workloads=tmp_path / "workloads"))
    agent, _ = agent_with(Wiring(), tmp_path)
    wiring._agent = agent
    ns = wiring._namespaces.of(POD.key, "/proc/self/ns/net")  # the new runtime's listen
    agent.pods[POD.key] = PodRuntime(POD, wiring)
    wiring.release(POD)  # the old runtime gives its certificate use up afterwards
    ns.socket().close()  # the new runtime still dials in the pod's namespace
    del agent.pods[POD.key]  # the pod leaves the mesh
    wiring.release(POD)
    with pytest.raises(SmeshError, match="cannot enter network namespace"):
        ns.socket()


def test_a_ca_directory_of_another_trust_domain_is_one_error_naming_both(tmp_path: Path) -> None:
    CertificateAuthority.init(tmp_path / "ca", trust_domain="example.org")
    config = AgentConfig(
        node="node-1",
        workloads=tmp_path / "workloads",
        identity={"trustDomain": "cluster.local", "caDir": str(tmp_path / "ca")},
    )
    agent = Agent(config, Wiring())  # type: ignore[arg-type]
    with pytest.raises(
        SmeshError, match=r"'cluster\.local' is not the trust domain .*'example\.org'"
    ):
        certificate_source(config, agent)


class Counts:
    def __init__(self, captured: int) -> None:
        self.captured = captured

    def as_dict(self) -> dict[str, int]:
        return {"captured": self.captured}


def test_capture_counters_that_restart_with_a_pod_captured_anew_keep_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node, "COUNTER_INTERVAL", 0.02)
    agent, capture = agent_with(Wiring(), tmp_path)
    readings = iter([5, 5, 2, 3])  # released and captured again after the second reading
    capture.counters = lambda key: Counts(next(readings, 3))  # type: ignore[attr-defined]

    async def scenario() -> None:
        await agent.reconcile(Snapshot({POD.key: POD}))
        exporting = asyncio.create_task(agent._export_counters())
        await asyncio.sleep(0.2)
        exporting.cancel()

    asyncio.run(scenario())
    exposition = agent.metrics.render().decode()
    line = (
        'smesh_capture_events_total{decision="captured",namespace="default",workload="pod-1"} 8.0'
    )
    assert line in exposition  # 5, then 2 and 1 more after the restart


class Reporting(DirectorySource):
    """A directory source that keeps what the agent reports after each reconcile."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.reports: list[tuple[list[str], dict[str, str]]] = []

    def reconciled(
        self, meshed: Mapping[str, Workload], failed: Mapping[str, tuple[Workload, str]]
    ) -> None:
        self.reports.append((sorted(meshed), {k: why for k, (_, why) in failed.items()}))


def test_a_pod_of_this_node_without_a_sandbox_is_not_meshed(tmp_path: Path) -> None:
    """A Kubernetes pod before its CNI ADD: known to the registry, not captured."""
    source = Reporting(tmp_path)
    agent = Agent(AgentConfig(node="node-1", workloads=tmp_path), Wiring(), source)  # type: ignore[arg-type]
    capture = Capture()
    agent.capture = capture  # type: ignore[assignment]
    bare = POD.model_copy(update={"netns": None, "cgroup": None})

    async def scenario() -> None:
        await agent._reconcile_or_retry(Snapshot({bare.key: bare}))
        assert agent.pods == {}
        assert capture.captured == set()
        assert agent.registry.lookup(bare.ips[0]) == bare
        assert agent.ready()  # nothing this node can mesh is waiting
        await agent._reconcile_or_retry(Snapshot({POD.key: POD}))  # its sandbox arrived

    asyncio.run(scenario())
    assert capture.captured == {POD.key}
    assert source.reports == [([], {}), ([POD.key], {})]


class FailingListen(Wiring):
    def __init__(self, *failures: BaseException) -> None:
        super().__init__()
        self.listen_failures = list(failures)

    async def listen(self, workload: Workload) -> Listeners:
        if self.listen_failures:
            raise self.listen_failures.pop(0)
        return await super().listen(workload)


def test_the_source_is_told_which_pods_failed_and_why(tmp_path: Path) -> None:
    source = Reporting(tmp_path)
    wiring = FailingListen(SmeshError("cannot listen in the pod's namespace"))
    agent = Agent(AgentConfig(node="node-1", workloads=tmp_path), wiring, source)  # type: ignore[arg-type]
    agent.capture = Capture()  # type: ignore[assignment]

    async def scenario() -> None:
        await agent._reconcile_or_retry(Snapshot({POD.key: POD}))
        assert source.reports == [([], {POD.key: "cannot listen in the pod's namespace"})]
        retry = asyncio.create_task(agent._retry_failed())
        try:
            while len(source.reports) < 2:
                await asyncio.sleep(0.01)
        finally:
            retry.cancel()

    asyncio.run(scenario())
    assert source.reports[1] == ([POD.key], {})


def test_a_pod_is_reported_meshed_before_its_certificate_arrives(tmp_path: Path) -> None:
    """The CNI ADD is answered once capture and listeners are in place: the signer's
    answer (or outage) is not on the pod's start path; its connections wait for it."""
    source = Reporting(tmp_path)
    wiring = Wiring(SignerUnavailable("signing service did not answer"), issue_delay=0.3)
    agent = Agent(AgentConfig(node="node-1", workloads=tmp_path), wiring, source)  # type: ignore[arg-type]
    capture = Capture()
    agent.capture = capture  # type: ignore[assignment]

    async def scenario() -> None:
        await agent._reconcile_or_retry(Snapshot({POD.key: POD}))
        assert source.reports == [([POD.key], {})]
        assert capture.captured == {POD.key}
        assert wiring.certificate_users == 0
        assert not agent.ready()  # /ready waits for the certificate too
        for _ in range(100):
            if agent.ready():
                break
            await asyncio.sleep(0.02)
        assert agent.ready()
        assert wiring.certificate_users == 1

    asyncio.run(scenario())


def test_a_bound_pod_gets_its_certificate_before_its_sandbox_and_gives_the_early_use_back(
    tmp_path: Path,
) -> None:
    """The CNI ADD finds the certificate held: the signer is off the pod's start path."""
    wiring = CachingWiring()
    agent, capture = agent_with(wiring, tmp_path)
    bare = POD.model_copy(update={"netns": None, "cgroup": None})

    async def scenario() -> None:
        await agent.reconcile(Snapshot({bare.key: bare}))  # bound, no sandbox yet
        for _ in range(200):
            if wiring.certificate_users:
                break
            await asyncio.sleep(0.01)
        assert wiring.certificate_users == 1  # fetched on the binding alone
        wiring.signer_down = True  # only a certificate already held can serve now
        await agent.reconcile(Snapshot({POD.key: POD}))  # the CNI ADD: its sandbox
        await until_ready(agent)
        assert agent.ready()
        await asyncio.sleep(0.01)  # the early use is given back once the pod holds its own
        assert wiring.certificate_users == 1

    asyncio.run(scenario())
    assert capture.captured == {POD.key}


def test_a_bound_pod_deleted_before_its_sandbox_gives_its_early_certificate_back(
    tmp_path: Path,
) -> None:
    wiring = Wiring(issue_delay=0.05)
    agent, capture = agent_with(wiring, tmp_path)
    bare = POD.model_copy(update={"netns": None, "cgroup": None})

    async def scenario() -> None:
        await agent.reconcile(Snapshot({bare.key: bare}))
        await agent.reconcile(Snapshot({}))  # deleted while its certificate is on the way
        await asyncio.sleep(0.2)

    asyncio.run(scenario())
    assert wiring.certificate_users == 0
    assert capture.captured == set()


def test_a_linger_is_cut_only_by_its_cap_or_a_sigint_never_by_time_alone() -> None:
    # no cap, no signal: the connections' own end is the only end
    assert node.linger_cut(10_000.0, 0.0, 0.0, None, 30.0) is None
    # timeouts.handoverDrain counts from the hand-over
    assert node.linger_cut(59.0, 0.0, 60.0, None, 30.0) is None
    assert node.linger_cut(60.0, 0.0, 60.0, None, 30.0) == "timeouts.handoverDrain"
    # a SIGINT gives timeouts.drain from its arrival
    assert node.linger_cut(129.0, 0.0, 0.0, 100.0, 30.0) is None
    assert node.linger_cut(130.0, 0.0, 0.0, 100.0, 30.0) == "SIGINT: timeouts.drain"


class BusyPod:
    """A handed-over pod runtime still serving one connection until *done* is set."""

    def __init__(self) -> None:
        self.done = asyncio.Event()
        self.shut = False

    def busy(self) -> bool:
        return not self.done.is_set()

    def active_connections(self) -> int:
        return 0 if self.done.is_set() else 1

    def hand_over(self) -> None:
        pass

    async def shutdown(self) -> None:
        self.shut = True


def admin_on_loopback(**settings: Any) -> dict[str, Any]:
    """Both admin listeners on free loopback ports (two of them: held while both bind)."""
    with socket.socket() as one, socket.socket() as other:
        one.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        ports = one.getsockname()[1], other.getsockname()[1]
    return {
        "scrape": {"address": "127.0.0.1", "port": ports[0]},
        "debug": {"address": "127.0.0.1", "port": ports[1]},
        **settings,
    }


def running_agent(tmp_path: Path, **config: Any) -> tuple[Agent, Path]:
    ready = tmp_path / "run" / "ready"
    admin = admin_on_loopback(readyFile=ready)
    agent, _capture = agent_with(
        Wiring(), tmp_path, admin=admin, handoverSocket=tmp_path / "handover.sock", **config
    )
    agent._open_capture = lambda: None  # type: ignore[method-assign]

    async def quiet() -> None:
        await asyncio.Event().wait()

    agent._watch = quiet  # type: ignore[method-assign]
    return agent, ready


async def wait_ready(path: Path, timeout: float = 2.0) -> None:
    """Until the agent writes its ready file *path* (it serves the node)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"no ready file {path} after {timeout:g} s"
        await asyncio.sleep(0.01)


def test_the_ready_file_says_whether_this_process_serves_the_node(tmp_path: Path) -> None:
    agent, ready = running_agent(tmp_path)
    ready.parent.mkdir()
    ready.write_text("4242\n")  # a crashed agent's, in the same pod

    async def scenario() -> None:
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(0)
        assert not ready.exists()  # gone before anything else
        await wait_ready(ready)
        assert ready.read_text() == f"{os.getpid()}\n"
        agent._signalled(signal.SIGTERM)  # a plain stop: no longer serving the node
        assert not ready.exists()
        assert await running == 0

    asyncio.run(scenario())


def test_a_broken_task_takes_the_ready_file_away(tmp_path: Path) -> None:
    agent, ready = running_agent(tmp_path)

    async def broken() -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("a bug in the workload watch")

    agent._watch = broken  # type: ignore[method-assign]

    async def scenario() -> None:
        running = asyncio.create_task(agent.run())
        await wait_ready(ready)
        assert ready.exists()
        await asyncio.sleep(0.3)
        assert agent.broken is not None
        assert not ready.exists()
        agent._stopping.set()
        assert await running == 0

    asyncio.run(scenario())


def test_an_unusable_ready_file_stops_the_agent_before_it_takes_anything(tmp_path: Path) -> None:
    agent, ready = running_agent(tmp_path)
    ready.parent.write_text("a file where the directory should be\n")
    with pytest.raises(node.AgentError, match=r"admin\.readyFile: cannot prepare"):
        asyncio.run(agent.run())


def test_a_handed_over_agent_serves_on_through_sigterm_and_a_sigint_gives_it_the_drain(
    tmp_path: Path,
) -> None:
    agent, ready = running_agent(tmp_path, timeouts={"drain": 0.2})
    pod = BusyPod()

    async def scenario() -> None:
        running = asyncio.create_task(agent.run())
        await wait_ready(ready)
        agent.pods["default/pod-1"] = pod  # type: ignore[assignment]
        agent._hand_over(4242)  # the new agent acknowledged
        agent._signalled(signal.SIGTERM)  # the kubelet deletes the old pod
        await asyncio.sleep(0.6)  # three drains
        assert not running.done()  # the open connection is still served
        assert not pod.shut
        assert ready.exists()  # its pod stays Ready while it serves (DaemonSet status)
        agent._signalled(signal.SIGINT)
        await asyncio.wait_for(running, 5)
        assert pod.shut  # cut after timeouts.drain

    asyncio.run(scenario())


def test_both_admin_listeners_take_their_passed_sockets_and_an_old_layouts_is_closed(
    tmp_path: Path,
) -> None:
    """A hand-over passes both listeners (keyed "admin" by address); a passed admin socket
    this agent does not serve at (an agent before the split held 0.0.0.0:15000) is closed
    before the listeners bind, as it would hold their port."""
    agent, ready = running_agent(tmp_path)
    admin = agent.config.admin
    passed = socket.create_server((admin.debug.address, admin.debug.port))  # the old agent's
    old_layout = socket.create_server(("127.0.0.1", 0))
    agent.inherited = {
        handover.SocketKey(handover.NODE, "admin", handover.address_of(sock)): sock
        for sock in (passed, old_layout)
    }

    async def scenario() -> None:
        running = asyncio.create_task(agent.run())
        await wait_ready(ready)
        offered = {key.address: sock for key, sock in agent._listening() if key.kind == "admin"}
        assert set(offered) == {f"127.0.0.1:{admin.debug.port}", f"127.0.0.1:{admin.scrape.port}"}
        assert offered[f"127.0.0.1:{admin.debug.port}"].fileno() == passed.fileno()
        assert old_layout.fileno() == -1
        get = asyncio.to_thread
        config = await get(client.get, "127.0.0.1", admin.debug.port, "/debug/config")
        assert config.json()["config"]["admin"]["debug"]["port"] == admin.debug.port
        assert (await get(client.get, "127.0.0.1", admin.scrape.port, "/metrics")).status == 200
        # each route on its own listener only
        assert (
            await get(client.get, "127.0.0.1", admin.scrape.port, "/debug/config")
        ).status == 404
        assert (await get(client.get, "127.0.0.1", admin.debug.port, "/healthz")).status == 404
        agent._stopping.set()
        assert await running == 0

    asyncio.run(scenario())


def test_a_debug_listener_off_the_loopback_is_served_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Configured explicitly, so served; but the log says who can read /debug now."""
    bound: list[tuple[str, int]] = []

    async def bind(server: object, host: str, port: int) -> None:  # no host listener here
        bound.append((host, port))

    monkeypatch.setattr(node.AdminServer, "start", bind)
    admin = {"scrape": {"port": 15020}, "debug": {"address": "0.0.0.0", "port": 15000}}
    for address, warned in (("0.0.0.0", True), ("127.0.0.1", False), ("::1", False)):
        admin["debug"]["address"] = address
        agent, _capture = agent_with(Wiring(), tmp_path, admin=admin)
        caplog.clear()
        asyncio.run(agent._start_admin())
        assert bound[-2:] == [("0.0.0.0", 15020), (address, 15000)]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert bool(warnings) == warned, warnings
        if warned:
            assert "admin.debug.address 0.0.0.0 is not a loopback address" in warnings[0]


def test_a_handed_over_agent_exits_once_its_connections_ended(tmp_path: Path) -> None:
    agent, ready = running_agent(tmp_path)
    pod = BusyPod()

    async def scenario() -> None:
        running = asyncio.create_task(agent.run())
        await asyncio.sleep(0.2)
        agent.pods["default/pod-1"] = pod  # type: ignore[assignment]
        agent._hand_over(4242)
        agent._signalled(signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert not running.done()
        pod.done.set()  # the last connection ended on its own
        assert await asyncio.wait_for(running, 5) == 0
        assert not ready.exists()

    asyncio.run(scenario())


class OrderedWiring(Wiring):
    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    async def listen(self, workload: Workload) -> Listeners:
        self.order.append(f"start {workload.name}")
        return Listeners(self)

    async def issue(self, workload: Workload) -> float:
        self.order.append(f"certificate {workload.name}")
        return await super().issue(workload)


class Reports:
    """The agent's reports as KubernetesSource takes them: CNI ADDs wait on them."""

    def __init__(self) -> None:
        self.meshed: dict[str, Workload] = {}
        self.progress = asyncio.Event()

    def reconciled(self, meshed: Mapping[str, Workload], failed: Mapping[str, Any]) -> None:
        self.meshed = dict(meshed)
        self.progress.set()
        self.progress = asyncio.Event()


def test_a_burst_of_pods_has_each_add_answered_before_the_next_pod_starts(
    tmp_path: Path,
) -> None:
    """A snapshot with several new pods (a burst of CNI ADDs) starts them one by one, and
    each pod's ADD replies before the next pod's start and before its certificate is asked
    for (a new identity's key is made on the loop): its wait is its own start, not the
    whole snapshot's."""
    order: list[str] = []
    agent, capture = agent_with(OrderedWiring(order), tmp_path)
    reports = Reports()
    agent.source = reports  # type: ignore[assignment]
    burst = [
        Workload(
            name=f"pod-{i}",
            node="node-1",
            ips=(f"198.18.1.{i + 1}",),
            netns=f"n{i}",
            cgroup=Path(f"/sys/fs/cgroup/p{i}"),
        )
        for i in range(1, 4)
    ]

    async def add(workload: Workload) -> None:  # as KubernetesSource.enrolment waits
        meshed = await wait_until(
            lambda: workload.key in reports.meshed,
            lambda: reports.progress.wait(),  # noqa: PLW0108 - the event of each call
            time.monotonic() + 5,
        )
        order.append(f"answer {workload.name}" if meshed else f"timeout {workload.name}")

    async def scenario() -> None:
        waiting = [asyncio.create_task(add(w)) for w in burst]
        await asyncio.sleep(0)
        await agent.reconcile(Snapshot({w.key: w for w in burst}))
        await asyncio.gather(*waiting)

    asyncio.run(scenario())
    answers = [step for step in order if not step.startswith("certificate")]
    assert answers == [f"{step} pod-{i}" for i in range(1, 4) for step in ("start", "answer")]
    for i in range(1, 4):
        assert order.index(f"answer pod-{i}") < order.index(f"certificate pod-{i}"), order
    assert capture.captured == {w.key for w in burst}
