"""``smesh bench --only kubernetes``: what meshing costs on a Kubernetes lab.

One meshed ``lab up --kubernetes`` lab (torn down even when a measurement fails), one
opted-in namespace, four measurements one after another, each leaving no pod behind:

1. memory: node-1's agent RSS with no pod on node-1, then with N meshed idle pods there;
2. enrolment: a Deployment scaled 0 → N, its pods spread on the nodes by the scheduler;
   each pod's ADD duration is the one the agent logs when it answers the ADD;
3. first connect: server pods created one after another through the API, each timed from
   just before its POST to the first HTTP reply a client pod on the other node gets over
   the mesh (the benchmark watches the pods and hands each address to the client at once);
4. churn: pods bound to node-2 by ``nodeName`` created and deleted, node-1's agent's CPU
   divided by the pod events the API sent meanwhile.

Every API call is made from inside ``LAB.control`` (:func:`smesh.lab.cluster.request`, and
the watch thread here enters that namespace): the machine's own network namespace never
talks to the lab's API server.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from smesh.bench import kubefigures, kubescale, parse
from smesh.bench.errors import BenchError
from smesh.bench.processes import Started
from smesh.errors import SmeshError

Progress = Callable[[str], None]

NAMESPACE = "bench"
SERVER_PORT = 8080
POLL = 0.2  # seconds between API polls while waiting for pods


@dataclass(frozen=True)
class KubePlan:
    nodes: int = 2
    enroll_pods: int = 50
    connect_pods: int = 20
    rss_pods: int = 100
    churn_pods: int = 50
    churn_rounds: int = 2
    rtt_batches: int = 20  # alternating pod-IP / ClusterIP batches
    rtt_rounds: int = 500  # round trips per batch and address, one connection
    rtt_connects: int = 25  # new connections per batch and address
    scale_services: int = 1000
    scale_endpoints: int = 10  # per Service
    scale_updates: int = 200  # EndpointSlice updates
    pod_timeout: float = 240.0  # seconds for a batch of pods to run or to go
    scale_timeout: float = 300.0  # seconds for the agent's table to hold every Service

    @classmethod
    def quick(cls) -> KubePlan:
        return cls(
            enroll_pods=20,
            connect_pods=5,
            rss_pods=30,
            churn_pods=20,
            churn_rounds=1,
            rtt_batches=6,
            rtt_rounds=200,
            rtt_connects=10,
            scale_services=100,
            scale_updates=50,
        )


# -- the API, from inside LAB.control ------------------------------------------------------


class Api:
    def __init__(self, lab: str) -> None:
        self.lab = lab

    def call(self, method: str, path: str, body: Any = None, patch: bool = False) -> Any:
        from smesh.lab import cluster  # noqa: PLC0415

        kind = "application/merge-patch+json" if patch else "application/json"
        status, reply = cluster.request(self.lab, method, path, body, content_type=kind)
        if status >= 400:
            message = reply.get("message") if isinstance(reply, dict) else reply
            raise BenchError(f"{method} {path}: HTTP {status}: {message}")
        return reply

    def pods(self, selector: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"labelSelector": selector})
        reply = self.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?{query}")
        items: list[dict[str, Any]] = reply.get("items") or []
        return items

    def create_pod(self, manifest: dict[str, Any]) -> None:
        self.call("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", manifest)

    def delete_pods(self, selector: str) -> None:
        query = urllib.parse.urlencode({"labelSelector": selector})
        self.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods?{query}")

    def wait_pods(self, selector: str, count: int, timeout: float, what: str) -> None:
        """Until *count* pods of *selector* run (0: until none is left)."""
        deadline = time.monotonic() + timeout
        while True:
            pods = self.pods(selector)
            running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
            if (count == 0 and not pods) or (count > 0 and len(running) >= count):
                return
            if time.monotonic() > deadline:
                raise BenchError(
                    f"{what}: {len(running)} of {count} pods running, {len(pods)} in the API "
                    f"after {timeout:.0f} s (see the kubelet logs in the lab's state)"
                )
            time.sleep(POLL)


def pod_manifest(
    name: str, app: str, command: list[str], node: str | None = None, bind: bool = False
) -> dict[str, Any]:
    """A pod of *app*; on *node* by the scheduler (a node selector) or bound (``nodeName``)."""
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "none", "command": command}],
    }
    if node is not None and bind:
        spec["nodeName"] = node
    elif node is not None:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": spec,
    }


IDLE = ["sleep", "infinity"]


def _expect_ok(response: http.client.HTTPResponse) -> None:
    if response.status != 200:
        raise BenchError(f"watch: HTTP {response.status}: {response.read()[:200]!r}")


class PodWatch:
    """A watch of the namespace's pods of one selector, in a thread inside ``LAB.control``.

    Counts the events the API sends (what every agent's cluster-wide informer receives for
    these pods) and calls *on_ip* once per pod, as soon as a status with its address comes.
    """

    def __init__(
        self, api: Api, selector: str, on_ip: Callable[[str, str], None] | None = None
    ) -> None:
        from smesh.lab import kubepaths  # noqa: PLC0415

        self.api = api
        self.selector = selector
        self.on_ip = on_ip
        self.counts = {"ADDED": 0, "MODIFIED": 0, "DELETED": 0}
        self.ip_seen: dict[str, float] = {}
        self.error: BaseException | None = None
        self._pki = kubepaths.pki_dir(api.lab)
        self._conn: http.client.HTTPSConnection | None = None
        self._stopping = False
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench pod watch", daemon=True)

    @property
    def events(self) -> int:
        return sum(self.counts.values())

    def start(self) -> None:
        query = urllib.parse.urlencode({"labelSelector": self.selector, "limit": "1"})
        reply = self.api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?{query}")
        self._version = str(reply["metadata"]["resourceVersion"])
        self._thread.start()
        if not self._started.wait(10) or self.error is not None:
            raise BenchError(f"the benchmark's pod watch did not start: {self.error}")

    def _run(self) -> None:
        from smesh.lab.kubepaths import API_PORT  # noqa: PLC0415
        from smesh.lab.topology import CONTROL_IP4  # noqa: PLC0415
        from smesh.linux import netns  # noqa: PLC0415

        try:
            netns.enter(f"{self.api.lab}.control")  # this thread only
            context = ssl.create_default_context(cafile=str(self._pki / "ca.crt"))
            context.load_cert_chain(str(self._pki / "admin.crt"), str(self._pki / "admin.key"))
            conn = http.client.HTTPSConnection(str(CONTROL_IP4), API_PORT, context=context)
            self._conn = conn
            query = urllib.parse.urlencode(
                {
                    "labelSelector": self.selector,
                    "watch": "true",
                    "resourceVersion": self._version,
                    "timeoutSeconds": "1800",
                }
            )
            conn.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?{query}")
            response = conn.getresponse()
            _expect_ok(response)
            self._started.set()
            while line := response.readline():
                self._event(json.loads(line))
        except BaseException as exc:  # handed to the measuring thread through self.error
            if not self._stopping:
                self.error = exc
        finally:
            self._started.set()

    def _event(self, event: dict[str, Any]) -> None:
        """Count one watch event; hand a new pod's address over (BOOKMARK, ERROR: ignored)."""
        kind = event.get("type", "")
        if kind not in self.counts:
            return
        self.counts[kind] += 1
        pod = event.get("object") or {}
        name = (pod.get("metadata") or {}).get("name", "")
        ip = (pod.get("status") or {}).get("podIP")
        if ip and name not in self.ip_seen and kind != "DELETED":
            self.ip_seen[name] = time.time()
            if self.on_ip is not None:
                self.on_ip(name, ip)

    def stop(self) -> None:
        self._stopping = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)
        if conn is not None:
            conn.close()


# -- the measurements ----------------------------------------------------------------------


@dataclass
class Lab:
    name: str
    api: Api
    agent_pids: dict[str, int]
    agent_logs: dict[str, Path]
    workdir: Path
    proxy_pids: dict[str, int] = field(default_factory=dict)


def _enrolled(lab: Lab, names: Iterable[str]) -> dict[str, kubefigures.Enrolment]:
    """The latest answered ADD of each of *names*, from every node's agent log."""
    found: dict[str, kubefigures.Enrolment] = {}
    for log_path in lab.agent_logs.values():
        text = log_path.read_text(errors="replace")
        found.update(kubefigures.latest_by_pod(kubefigures.enrolments(text, NAMESPACE)))
    wanted = {f"{NAMESPACE}/{n}" for n in names}
    return {pod: e for pod, e in found.items() if pod in wanted}


def _wait_enrolled(lab: Lab, names: list[str], timeout: float) -> dict[str, kubefigures.Enrolment]:
    deadline = time.monotonic() + timeout
    while True:
        found = _enrolled(lab, names)
        if len(found) == len(names):
            not_meshed = sorted(pod for pod, e in found.items() if not e.meshed)
            if not_meshed:
                raise BenchError(f"pods answered as not meshed: {', '.join(not_meshed[:5])}")
            return found
        if time.monotonic() > deadline:
            missing = sorted(set(names) - {p.partition("/")[2] for p in found})
            raise BenchError(
                f"no answered CNI ADD in the agents' logs for {len(missing)} pods "
                f"({', '.join(missing[:5])}...)"
            )
        time.sleep(POLL)


def _pod_names(lab: Lab, selector: str) -> list[str]:
    return [p["metadata"]["name"] for p in lab.api.pods(selector)]


def _settle() -> None:
    time.sleep(2.0)  # the agent's reconcile of the last change, timers, freed buffers


def measure_memory(lab: Lab, plan: KubePlan, progress: Progress) -> dict[str, Any]:
    count = plan.rss_pods
    _settle()
    pid = lab.agent_pids["node-1"]
    before = parse.rss_kib(pid)
    progress(f"memory: node-1's agent {before} KiB with no pod; creating {count} idle pods")
    for index in range(count):
        lab.api.create_pod(pod_manifest(f"idle-{index}", "idle", IDLE, "node-1", bind=True))
    lab.api.wait_pods("app=idle", count, plan.pod_timeout, "memory")
    _wait_enrolled(lab, _pod_names(lab, "app=idle"), plan.pod_timeout)
    _settle()
    after = parse.rss_kib(pid)
    per_pod = (after - before) / count
    progress(f"memory: {after} KiB with {count} meshed pods: {per_pod:.0f} KiB per pod")
    lab.api.delete_pods("app=idle")
    lab.api.wait_pods("app=idle", 0, plan.pod_timeout, "memory, deleting")
    return {"rss_before_kib": before, "rss_after_kib": after, "pods": count, "per_pod": per_pod}


def measure_enrolment(lab: Lab, plan: KubePlan, progress: Progress) -> dict[str, Any]:
    count = plan.enroll_pods
    template = pod_manifest("", "enrol", IDLE)
    del template["metadata"]["name"]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "enrol"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "enrol"}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }
    path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
    lab.api.call("POST", path, deployment)
    progress(f"enrolment: scaling a Deployment 0 → {count}")
    lab.api.call("PATCH", f"{path}/enrol", {"spec": {"replicas": count}}, patch=True)
    lab.api.wait_pods("app=enrol", count, plan.pod_timeout, "enrolment")
    pods = lab.api.pods("app=enrol")
    found = _wait_enrolled(lab, [p["metadata"]["name"] for p in pods], plan.pod_timeout)
    per_node: dict[str, int] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName", "")
        per_node[node] = per_node.get(node, 0) + 1
    durations = sorted(e.ms for e in found.values())
    p50 = kubefigures.percentile(durations, 50)
    p99 = kubefigures.percentile(durations, 99)
    progress(
        f"enrolment: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {durations[-1]:.1f} ms "
        f"over {len(durations)} pods ({per_node})"
    )
    lab.api.call("DELETE", f"{path}/enrol")
    lab.api.delete_pods("app=enrol")
    lab.api.wait_pods("app=enrol", 0, plan.pod_timeout, "enrolment, deleting")
    return {"p50": p50, "p99": p99, "durations_ms": durations, "pods_per_node": per_node}


def measure_first_connect(lab: Lab, plan: KubePlan, progress: Progress) -> dict[str, Any]:
    lab.api.create_pod(pod_manifest("prober", "prober", IDLE, "node-1"))
    lab.api.wait_pods("app=prober", 1, plan.pod_timeout, "first connect, client pod")
    log = lab.workdir / "kubeprobe.log"
    probe = Started(
        lab.name, f"{NAMESPACE}/prober", [sys.executable, "-m", "smesh.bench.kubeprobe"], log
    )
    lock = threading.Lock()

    def hand_over(name: str, ip: str) -> None:
        assert probe.proc.stdin is not None
        with lock:
            probe.proc.stdin.write(f"{name} {ip} {SERVER_PORT}\n".encode())
            probe.proc.stdin.flush()

    watch = PodWatch(lab.api, "app=server", hand_over)
    created: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        _wait_for_line(probe, log, ("ready", True), 30, "the client")
        watch.start()
        server = ["python3", "-m", "http.server", str(SERVER_PORT)]
        for index in range(plan.connect_pods):
            name = f"server-{index}"
            manifest = pod_manifest(name, "server", server, "node-2")
            created[name] = time.time()
            lab.api.create_pod(manifest)
            reply = _wait_for_line(probe, log, ("name", name), 60, f"a reply of {name}")
            if "error" in reply:
                raise BenchError(f"first connect to {name}: {reply['error']}")
            results[name] = reply
            if watch.error is not None:
                raise BenchError(f"the pod watch failed: {watch.error}")
    finally:
        watch.stop()
        probe.stop()
    latencies = sorted((results[n]["ok_at"] - created[n]) * 1000 for n in results)
    to_ip = sorted((watch.ip_seen[n] - created[n]) * 1000 for n in results if n in watch.ip_seen)
    p99 = kubefigures.percentile(latencies, 99)
    progress(
        f"first connect: p50 {kubefigures.percentile(latencies, 50):.0f} ms, p99 {p99:.0f} ms "
        f"over {len(latencies)} pods (address in the API after p50 "
        f"{kubefigures.percentile(to_ip, 50):.0f} ms)"
    )
    lab.api.delete_pods("app in (server, prober)")
    lab.api.wait_pods("app in (server, prober)", 0, plan.pod_timeout, "first connect, deleting")
    return {
        "p50": kubefigures.percentile(latencies, 50),
        "p99": p99,
        "latencies_ms": latencies,
        "address_seen_ms": to_ip,
        "attempts": [results[n]["attempts"] for n in results],
    }


def _wait_for_line(
    process: Started,
    log: Path,
    wanted: tuple[str, Any],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get(wanted[0]) == wanted[1]:
                    return record
        if process.proc.poll() is not None:
            break
        time.sleep(0.02)
    tail = log.read_text(errors="replace").strip()[-400:]
    raise BenchError(f"no sign of {what} within {timeout:.0f} s: {tail}")


def measure_churn(lab: Lab, plan: KubePlan, progress: Progress) -> dict[str, Any]:
    pid = lab.agent_pids["node-1"]
    _settle()
    idle_start = parse.cpu_seconds(pid)
    time.sleep(5.0)
    idle_per_s = (parse.cpu_seconds(pid) - idle_start) / 5.0
    watch = PodWatch(lab.api, "app=churn")
    watch.start()
    started = time.monotonic()
    cpu_before = parse.cpu_seconds(pid)
    try:
        for round_ in range(plan.churn_rounds):
            for index in range(plan.churn_pods):
                name = f"churn-{round_}-{index}"
                lab.api.create_pod(pod_manifest(name, "churn", IDLE, "node-2", bind=True))
            lab.api.wait_pods("app=churn", plan.churn_pods, plan.pod_timeout, "churn")
            lab.api.delete_pods("app=churn")
            lab.api.wait_pods("app=churn", 0, plan.pod_timeout, "churn, deleting")
        _settle()
        cpu = parse.cpu_seconds(pid) - cpu_before
        seconds = time.monotonic() - started
    finally:
        watch.stop()
    if watch.error is not None:
        raise BenchError(f"the pod watch failed: {watch.error}")
    per_1k = kubefigures.per_thousand(cpu, watch.events)
    progress(
        f"churn: node-1's agent used {cpu:.2f} CPU s in {seconds:.0f} s for {watch.events} "
        f"pod events on node-2 ({per_1k:.2f} s per 1,000; idle {idle_per_s * 1000:.1f} ms/s)"
    )
    return {
        "cpu_s": cpu,
        "seconds": seconds,
        "events": dict(watch.counts),
        "idle_cpu_s_per_s": idle_per_s,
        "per_1k": per_1k,
    }


def _metrics(lab: Lab, node: str) -> str:
    from smesh.agent import client as admin_client  # noqa: PLC0415

    reply = admin_client.get("127.0.0.1", 15020, "/metrics", netns=f"{lab.name}.{node}")
    return reply.body.decode()


ECHO_PORT = 9000


def measure_service_rtt(lab: Lab, plan: KubePlan, progress: Progress) -> dict[str, Any]:
    """Round trips and connects to one server, by pod IP and by ClusterIP, interleaved."""
    echo = [sys.executable, "-m", "smesh.bench.kubertt", "serve", str(ECHO_PORT)]
    lab.api.create_pod(pod_manifest("echo", "echo", echo, "node-2"))
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"}, "ports": [{"port": ECHO_PORT}]},
    }
    created = lab.api.call("POST", f"/api/v1/namespaces/{NAMESPACE}/services", service)
    cluster_ip = created["spec"]["clusterIP"]
    lab.api.create_pod(pod_manifest("rtt-client", "rtt-client", IDLE, "node-1"))
    lab.api.wait_pods("app in (echo, rtt-client)", 2, plan.pod_timeout, "round trips")
    pod_ip = lab.api.pods("app=echo")[0]["status"]["podIP"]
    log = lab.workdir / "kubertt.log"
    log.unlink(missing_ok=True)  # its "done" line is what the run waits for
    tunnels = 'result="tunnel"'
    before = kubescale.counter(_metrics(lab, "node-1"), "smesh_service_routes_total", tunnels)
    argv = [sys.executable, "-m", "smesh.bench.kubertt", "client", pod_ip, cluster_ip]
    argv += [str(ECHO_PORT), str(plan.rtt_batches), str(plan.rtt_rounds), str(plan.rtt_connects)]
    client = Started(lab.name, f"{NAMESPACE}/rtt-client", argv, log)
    try:
        record = _wait_for_line(client, log, ("done", True), 600, "the round trips")
    finally:
        client.stop()
    if "error" in record:
        raise BenchError(f"round trips: {record['error']}")
    tunnelled = (
        kubescale.counter(_metrics(lab, "node-1"), "smesh_service_routes_total", tunnels) - before
    )
    wanted = plan.rtt_batches * plan.rtt_connects + 1
    if tunnelled < wanted:
        raise BenchError(
            f"round trips: only {tunnelled:.0f} of the {wanted} connects to the ClusterIP were "
            'tunnelled by node-1\'s agent (smesh_service_routes_total{result="tunnel"})'
        )
    figures = kubefigures.round_trips(record["result"])
    progress(
        "service round trips: pod IP p50 {pod_rtt_p50_us:.0f} µs p99 {pod_rtt_p99_us:.0f} µs, "
        "ClusterIP p50 {svc_rtt_p50_us:.0f} µs p99 {svc_rtt_p99_us:.0f} µs "
        "(Δ p50 {svc_rtt_delta_p50_us:+.0f} µs); connect + round trip p50: pod IP "
        "{pod_connect_p50_us:.0f} µs, ClusterIP {svc_connect_p50_us:.0f} µs".format(**figures)
    )
    lab.api.call("DELETE", f"/api/v1/namespaces/{NAMESPACE}/services/echo")
    lab.api.delete_pods("app in (echo, rtt-client)")
    lab.api.wait_pods("app in (echo, rtt-client)", 0, plan.pod_timeout, "round trips, deleting")
    return {**figures, "cluster_ip": cluster_ip, "tunnelled_connects": tunnelled}


SCALE_NAMESPACE = "bench-scale"  # not opted in: the agents hold every namespace's Services


class Poster:
    """Many API writes over a few kept-alive connections, from threads inside
    ``LAB.control`` (one HTTPS connection per request would cost the API server and this
    process a TLS handshake per object)."""

    WORKERS = 4

    def __init__(self, lab: str) -> None:
        self.lab = lab

    def send(self, requests: list[tuple[str, str, dict[str, Any], str]]) -> None:
        """(method, path, body, content type) each; raises the first failure."""
        from smesh.lab import kubepaths  # noqa: PLC0415
        from smesh.lab.kubepaths import API_PORT  # noqa: PLC0415
        from smesh.lab.topology import CONTROL_IP4  # noqa: PLC0415
        from smesh.linux import netns  # noqa: PLC0415

        pki = kubepaths.pki_dir(self.lab)
        errors: list[str] = []
        shares = [requests[i :: self.WORKERS] for i in range(self.WORKERS)]

        def work(share: list[tuple[str, str, dict[str, Any], str]]) -> None:
            try:
                netns.enter(f"{self.lab}.control")  # this thread only
                context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
                context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
                conn = http.client.HTTPSConnection(
                    str(CONTROL_IP4), API_PORT, context=context, timeout=30
                )
                for method, path, body, kind in share:
                    if errors:
                        return
                    data = json.dumps(body).encode()
                    headers = {"Content-Type": kind, "Accept": "application/json"}
                    conn.request(method, path, body=data, headers=headers)
                    response = conn.getresponse()
                    reply = response.read()
                    if response.status >= 400:
                        errors.append(f"{method} {path}: HTTP {response.status}: {reply[:200]!r}")
                        return
                conn.close()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"API writes: {exc}")

        threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in shares]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise BenchError(errors[0])


def _wait_table(
    lab: Lab, services: int, endpoints: int, timeout: float, what: str
) -> tuple[tuple[int, int], int]:
    """Until node-1's agent's service table holds *services* and *endpoints* (at least):
    what it holds, and how many times its /metrics was read for it."""
    deadline = time.monotonic() + timeout
    reads = 0
    while True:
        held = kubescale.table_size(_metrics(lab, "node-1"))
        reads += 1
        if held[0] >= services and held[1] >= endpoints:
            return held, reads
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what}: node-1's agent holds {held[0]} Services and {held[1]} endpoints "
                f"after {timeout:.0f} s, not {services} and {endpoints} (smesh_service_table)"
            )
        time.sleep(0.5)  # each look renders the agent's /metrics (its CPU is taken off)


def _metrics_cpu(lab: Lab, pid: int, reads: int = 20) -> float:
    """The agent's CPU seconds per /metrics read, to take the benchmark's reads off."""
    before = parse.cpu_seconds(pid)
    for _ in range(reads):
        _metrics(lab, "node-1")
    return (parse.cpu_seconds(pid) - before) / reads


def _quiet_cpu(pid: int, limit: float = 60.0) -> float:
    """A process's CPU (children included) once it stopped using any for a second."""
    readings = [parse.cpu_seconds(pid, children=True)]
    deadline = time.monotonic() + limit
    while not kubescale.settled(readings, 0.02) and time.monotonic() < deadline:
        time.sleep(1.0)
        readings.append(parse.cpu_seconds(pid, children=True))
    return readings[-1]


def measure_service_scale(lab: Lab, plan: KubePlan, progress: Progress) -> dict[str, Any]:
    """S selector-less Services and their slices created, then updated: node-1's agent's
    memory and CPU (and its kube-proxy's CPU) for holding and following them."""
    count, per = plan.scale_services, plan.scale_endpoints
    lab.api.call("POST", "/api/v1/namespaces", {"metadata": {"name": SCALE_NAMESPACE}})
    pid, proxy = lab.agent_pids["node-1"], lab.proxy_pids["node-1"]
    _settle()
    base = kubescale.table_size(_metrics(lab, "node-1"))
    per_read = _metrics_cpu(lab, pid)
    rss_before = parse.rss_kib(pid)
    cpu_before = parse.cpu_seconds(pid)
    proxy_before = _quiet_cpu(proxy)
    proxy_rss_before = parse.rss_kib(proxy)
    progress(
        f"service scale: node-1's agent {rss_before} KiB holding {base[0]} Services; creating "
        f"{count} Services of {per} endpoints"
    )
    prefix = f"/api/v1/namespaces/{SCALE_NAMESPACE}"
    slices = f"/apis/discovery.k8s.io/v1/namespaces/{SCALE_NAMESPACE}/endpointslices"
    json_kind = "application/json"
    writes = []
    for index in range(count):
        writes.append(("POST", f"{prefix}/services", kubescale.service(index), json_kind))
        writes.append(("POST", slices, kubescale.endpoint_slice(index, per), json_kind))
    started = time.monotonic()
    Poster(lab.name).send(writes)
    posted = time.monotonic() - started
    held, reads = _wait_table(
        lab, base[0] + count, base[1] + count * per, plan.scale_timeout, "scale"
    )
    sync_s = time.monotonic() - started
    cpu_sync = parse.cpu_seconds(pid) - cpu_before - reads * per_read
    _settle()
    rss_after = parse.rss_kib(pid)
    proxy_sync = _quiet_cpu(proxy) - proxy_before
    proxy_rss_after = parse.rss_kib(proxy)
    per_1k = (rss_after - rss_before) / (count * per) * 1000
    progress(
        f"service scale: table holds {held[0]} Services, {held[1]} endpoints {sync_s:.1f} s "
        f"after the first create (writes took {posted:.1f} s); agent {cpu_sync:.2f} CPU s, "
        f"{rss_after} KiB (+{per_1k:.0f} KiB per 1,000 endpoints); kube-proxy "
        f"{proxy_sync:.2f} CPU s, RSS {proxy_rss_before} → {proxy_rss_after} KiB"
    )
    # Updates: readiness flips, then one last patch that adds an endpoint, which the
    # table's endpoint count shows: the informer applies a watch's events in order, so the
    # agent has applied every flip once it shows the last.
    patch = "application/merge-patch+json"
    flips = [
        ("PATCH", f"{slices}/{name}", body, patch)
        for name, body in kubescale.updates(count, per, plan.scale_updates)
    ]
    last = {"endpoints": kubescale.endpoints(count, per + 1)}
    proxy_before = parse.cpu_seconds(proxy, children=True)
    cpu_before = parse.cpu_seconds(pid)
    started = time.monotonic()
    Poster(lab.name).send(flips)
    Poster(lab.name).send([("PATCH", f"{slices}/{kubescale.name(0)}-1", last, patch)])
    _, reads = _wait_table(lab, held[0], held[1] + 1, plan.scale_timeout, "scale, updates")
    update_s = time.monotonic() - started
    cpu_updates = parse.cpu_seconds(pid) - cpu_before - reads * per_read
    proxy_updates = _quiet_cpu(proxy) - proxy_before
    updates = plan.scale_updates + 1
    progress(
        f"service scale: {updates} EndpointSlice updates applied in {update_s:.1f} s: agent "
        f"{cpu_updates * 1000 / updates:.2f} CPU ms per update, kube-proxy "
        f"{proxy_updates * 1000 / updates:.2f}"
    )
    # The namespace goes with its objects; the lab is torn down next, nothing waits for it.
    lab.api.call("DELETE", f"/api/v1/namespaces/{SCALE_NAMESPACE}")
    return {
        "services": count,
        "endpoints": count * per,
        "table_before": list(base),
        "table_after": list(held),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_kib_per_1k_endpoints": per_1k,
        # Go's heap grows in steps and is returned lazily: a rough comparison only
        "kube_proxy_rss_before_kib": proxy_rss_before,
        "kube_proxy_rss_after_kib": proxy_rss_after,
        "writes_s": posted,
        "agent_cpu_ms_per_metrics_read": per_read * 1000,
        "sync_s": sync_s,
        "agent_cpu_s_sync": cpu_sync,
        "kube_proxy_cpu_s_sync": proxy_sync,
        "updates": updates,
        "update_s": update_s,
        "agent_cpu_ms_per_update": cpu_updates * 1000 / updates,
        "kube_proxy_cpu_ms_per_update": proxy_updates * 1000 / updates,
    }


# -- the run -------------------------------------------------------------------------------


def _prepare(api: Api) -> None:
    api.call(
        "POST",
        "/api/v1/namespaces",
        {"metadata": {"name": NAMESPACE, "labels": {"smesh.io/mesh": "enabled"}}},
    )
    deadline = time.monotonic() + 60
    while True:  # pods are refused until the controller manager made the ServiceAccount
        with contextlib.suppress(BenchError):
            api.call("GET", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default")
            return
        if time.monotonic() > deadline:
            raise BenchError(f"no ServiceAccount default in namespace {NAMESPACE} after 60 s")
        time.sleep(POLL)


def _gc_full_pause(lab: str, node: str) -> float:
    """Milliseconds *node*'s agent spent in full garbage collections so far."""
    from smesh.agent import client as admin_client  # noqa: PLC0415

    reply = admin_client.get("127.0.0.1", 15020, "/metrics", netns=f"{lab}.{node}")
    return kubefigures.gc_full_pause_seconds(reply.body.decode()) * 1000


def _figures(notes: dict[str, Any]) -> dict[str, float]:
    """The figures of the steps that ran, from their notes."""
    figures: dict[str, float] = {}
    if "memory" in notes:
        figures["agent_rss_kib_per_pod"] = notes["memory"]["per_pod"]
    if "enrolment" in notes:
        figures["enroll_p50_ms"] = notes["enrolment"]["p50"]
        figures["enroll_p99_ms"] = notes["enrolment"]["p99"]
    if "first_connect" in notes:
        figures["first_connect_p99_ms"] = notes["first_connect"]["p99"]
    if "churn" in notes:
        figures["agent_cpu_s_per_1k_pod_events"] = notes["churn"]["per_1k"]
    if "service_rtt" in notes:
        rtt = notes["service_rtt"]
        figures.update({k: v for k, v in rtt.items() if k in kubefigures.FIGURE_NAMES})
    if "service_scale" in notes:
        scale = notes["service_scale"]
        figures["agent_rss_kib_per_1k_endpoints"] = scale["rss_kib_per_1k_endpoints"]
        figures["agent_cpu_s_service_sync"] = scale["agent_cpu_s_sync"]
        figures["kube_proxy_cpu_s_service_sync"] = scale["kube_proxy_cpu_s_sync"]
        figures["agent_cpu_ms_per_endpoint_update"] = scale["agent_cpu_ms_per_update"]
        figures["kube_proxy_cpu_ms_per_endpoint_update"] = scale["kube_proxy_cpu_ms_per_update"]
    return figures


def run(plan: KubePlan, workdir: Path, progress: Progress) -> dict[str, Any]:
    """Bring a meshed Kubernetes lab up, measure, tear it down: the report's section."""
    import secrets  # noqa: PLC0415

    from smesh.lab import agents, api  # noqa: PLC0415
    from smesh.lab.controlplane import missing_binaries  # noqa: PLC0415

    section: dict[str, Any] = {"plan": asdict(plan), "figures": {}, "notes": {}}
    absent = missing_binaries()
    if absent:
        section["failed"] = f"Kubernetes binaries not built ({', '.join(absent)}): make kubernetes"
        return section
    name = f"benchk{secrets.token_hex(3)}"
    progress(f"building Kubernetes lab {name} ({plan.nodes} nodes, mesh on)")
    try:
        # process agents: the figures read each agent's pid (RSS) and agent.log (ADD times)
        # a service range for the scale step's Services (the default /24 holds 253)
        api.up(
            name,
            nodes=plan.nodes,
            mesh=True,
            kubernetes=True,
            install="processes",
            service_cidr=kubescale.SERVICE_CIDR,
        )
    except Exception as exc:  # reported in the section; api.up cleaned up after itself
        section["failed"] = f"lab up --kubernetes failed: {exc}"
        return section
    try:
        saved, topo = api.load(name)
        lab = Lab(
            name,
            Api(name),
            {node: process.pid for node, process in saved.agents.items()},
            {n.name: agents.node_dir(name, n.name) / "agent.log" for n in topo.nodes},
            workdir,
            {node: process.pid for node, process in saved.proxies.items()},
        )
        workdir.mkdir(parents=True, exist_ok=True)
        _prepare(lab.api)
        figures, notes = section["figures"], section["notes"]
        steps = (
            ("memory", measure_memory),
            ("enrolment", measure_enrolment),
            ("first_connect", measure_first_connect),
            ("churn", measure_churn),
            ("service_rtt", measure_service_rtt),
            ("service_scale", measure_service_scale),  # last: its Services stay till lab down
        )
        for step, measure in steps:
            try:
                notes[step] = measure(lab, plan, progress)
            except BenchError as exc:
                section.setdefault("failed", "")
                section["failed"] += f"{step}: {exc}; "
                progress(f"{step} FAILED: {exc}")
                continue
        figures.update(_figures(notes))
        try:
            pauses = {node: _gc_full_pause(name, node) for node in lab.agent_pids}
        except (OSError, SmeshError) as exc:
            progress(f"garbage collection pauses: cannot read the agents' metrics: {exc}")
        else:
            notes["gc_full_pause_ms"] = pauses
            figures["agent_gc_full_pause_ms"] = round(sum(pauses.values()), 1)
    finally:
        progress(f"tearing down {name}")
        api.down(name)
    return section
