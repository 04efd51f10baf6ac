"""The meshed Kubernetes lab end to end: pods from kubectl, enrolled through smesh-cni.

One meshed 2-node cluster for the whole module (tests run in file order and build on each
other's pods; the last one brings the lab down and checks that nothing is left). Two
namespaces run the same app: ``shop`` is opted in (``smesh.io/mesh=enabled``), ``plain`` is
not. Each has a Deployment ``web`` (2 replicas, one per node, its own ServiceAccount) of a
small HTTP server that echoes the request's path and body, and a ``client`` pod on node-1.
A marker no other run uses goes into every URL and body, so a packet capture on node-1's
links can tell plaintext of ours from anything else.
"""

from __future__ import annotations

import collections.abc
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from smesh.agent import client as admin_client
from smesh.capture import libbpf, pins
from smesh.lab import kubepaths, state
from smesh.lab.agents import DEBUG_PORT
from smesh.lab.errors import LabError
from smesh.linux import netns
from tests.integration.kubernetes.clusterkit import (
    TRUST,
    Footprint,
    access,
    container,
    deployed,
    kubectl,
    kubernetes_lab,
    listing,
    mesh_namespace,
    metric,
    pod,
    pods,
    running,
    sandbox_of,
    sniffing,
    wait_for,
)
from tests.integration.kubernetes.sandboxkit import attached_programs
from tests.integration.labkit import Lab, between, on_port, smesh

MARKER = f"smk{secrets.token_hex(6)}"
# Echoes "echo PATH BODY"; /slow streams a gigabyte in 64 KiB steps, 20 a second.
SERVER = """
import http.server, time
class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self): self.answer(b"")
    def do_POST(self): self.answer(self.rfile.read(int(self.headers["content-length"])))
    def answer(self, body):
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("content-length", str(1 << 30))
            self.end_headers()
            while True:
                self.wfile.write(b"x" * 65536)
                time.sleep(0.05)
        reply = b"echo " + self.path.encode() + b" " + body
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Echo).serve_forever()
"""


def app(name: str, meshed: bool) -> str:
    """The namespace, the web Deployment with its ServiceAccount, and the client pod."""
    items = [
        mesh_namespace(name, meshed=meshed),
        *deployed(name, "web", [container(["python3", "-c", SERVER], name="http")]),
        pod("client", name, "node-1"),
    ]
    return listing(items)


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    # process agents: the tests read agent.log files, agent pids and the lab's signer.
    # A namespace's label reaches the two agents' registries through their informers, one
    # after the other: on a loaded machine the second can trail the first by more than the
    # default 2 s an inbound peer is given (timeouts.registryLag), and a request made as soon
    # as the first agent meshed its pods was refused ("… is pod shop/client, not meshed").
    lag = ("--agent-set", "timeouts.registryLag=10s")
    with kubernetes_lab("km", "--nodes", "2", "--install", "processes", *lag) as lab:
        kubectl(lab, "apply", "-f", "-", stdin=app("shop", meshed=True))
        kubectl(lab, "apply", "-f", "-", stdin=app("plain", meshed=False))
        yield lab


# -- helpers ---------------------------------------------------------------------------------


def web(lab: Lab, namespace: str, count: int = 2) -> dict[str, dict[str, Any]]:
    return running(lab, "-n", namespace, "-l", "app=web", count=count)


def workloads(lab: Lab, node: str) -> dict[str, dict[str, Any]]:
    """The agent's meshed pods on *node* (its admin endpoint, reached in the node's netns)."""
    reply = admin_client.get(
        "127.0.0.1", DEBUG_PORT, "/debug/workloads", netns=f"{lab.name}.{node}"
    )
    assert reply.status == 200
    return {w["pod"]: w for w in reply.json()["workloads"]}


def meshed(lab: Lab, pod: dict[str, Any]) -> dict[str, Any] | None:
    key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    return workloads(lab, pod["spec"]["nodeName"]).get(key)


def connections(lab: Lab, node: str) -> list[dict[str, Any]]:
    reply = admin_client.get(
        "127.0.0.1", DEBUG_PORT, "/debug/connections", netns=f"{lab.name}.{node}"
    )
    assert reply.status == 200
    return reply.json()["connections"]  # type: ignore[no-any-return]


def ready(lab: Lab, *all_pods: dict[str, Any]) -> bool:
    """Captured, listening and holding the certificate (enrolment waits for less)."""
    return all(
        (w := meshed(lab, p)) is not None and w["stage"] == "ready" and w["certificate"] == "issued"
        for p in all_pods
    )


def outbound(lab: Lab, mark: int, count: int) -> list[dict[str, Any]]:
    """node-1's outbound records of requests after *mark*, once there are *count* (an agent
    writes a record when it has closed the connection, which may be just after the client
    exits: so a readiness probe of serving() can land after the mark, but it sends no byte)."""

    def check() -> list[dict[str, Any]]:
        found = [
            r
            for r in access(lab, "node-1")[mark:]
            if r["direction"] == "outbound" and r["bytes_sent"] > 0
        ]
        return found if len(found) >= count else []

    found: list[dict[str, Any]] = wait_for(f"{count} outbound records on node-1", check, 10)
    return found


def request(lab: Lab, client: str, pod: dict[str, Any], path: str = "") -> str:
    """POST a marked body to a marked path of *pod*; the server's echo of both."""
    ip = pod["status"]["podIP"]
    proc = lab.exec(
        client,
        [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-d",
            f"body-{MARKER}",
            f"http://{ip}:8080/path-{MARKER}{path}",
        ],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"echo /path-{MARKER}{path} body-{MARKER}"
    return proc.stdout


def serving(lab: Lab, client: str, *targets: dict[str, Any]) -> None:
    """Wait until *targets*' servers listen: Running says their process started, not that.

    If one never answers, the error says what node-1's agent knew of it (its registry entry
    and its last connections there): a registry behind, or a route, tells them apart."""
    for target in targets:
        ip = target["status"]["podIP"]
        try:
            lab.wait_tcp(client, ip, 8080, timeout=30)
        except LabError as exc:
            reply = admin_client.get(
                "127.0.0.1", DEBUG_PORT, "/debug/workloads", netns=f"{lab.name}.node-1"
            )
            known = [e for e in reply.json().get("registry", []) if ip in str(e)]
            tried = [r for r in access(lab, "node-1") if r.get("destination", "").startswith(ip)]
            raise AssertionError(
                f"{exc}; node-1's registry: {known}; its last connections there: {tried[-3:]}; "
                f"at the pod: {_seen_at(lab, target)}"
            ) from exc


def _seen_at(lab: Lab, target: dict[str, Any]) -> dict[str, str]:
    """The target's side of an unanswered connect: its node's neighbour entry for it, and
    the sockets listening in its netns (a ready pod listens on the tunnel port)."""

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (proc.stdout + proc.stderr).strip()

    node = f"{lab.name}.{target['spec']['nodeName']}"
    name = str(sandbox_of(lab, target)["netns"])  # an `ip netns` name
    netns_path = name if name.startswith("/") else f"/run/netns/{name}"
    return {
        "neighbour": run("ip", "-n", node, "neigh", "show", target["status"]["podIP"]),
        "listening": run("nsenter", f"--net={netns_path}", "ss", "-ltn"),
    }


def refused(lab: Lab, client: str, pod: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    ip = pod["status"]["podIP"]
    return lab.exec(
        client, ["curl", "-sS", "--connect-timeout", "3", f"http://{ip}:8080/refused-{MARKER}"]
    )


def released(lab: Lab, pod: dict[str, Any], cgroup_id: int) -> None:
    """Nothing of *pod* is left with its node's agent: workload, capture, pins, record."""
    node, uid = pod["spec"]["nodeName"], pod["metadata"]["uid"]
    key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    assert key not in workloads(lab, node)
    assert not [link for link in libbpf.links() if link.cgroup_id == cgroup_id]
    with pins.PinnedCapture(state.bpf_pin_dir(lab.name) / node) as pinned:
        assert key not in {p.pod_id for p in pinned.pods()}
        assert not [pin for pin, link in pinned.links() if link.cgroup_id == cgroup_id]
    records = kubepaths.node_dir(lab.name, node) / "sandboxes"
    assert not (records / f"{uid}.json").exists()


def cgroup_id(lab: Lab, pod: dict[str, Any]) -> int:
    return os.stat(sandbox_of(lab, pod)["cgroup"]).st_ino


# -- tests -----------------------------------------------------------------------------------


def test_requests_to_meshed_pods_are_mutual_tls_with_their_identities(cluster: Lab) -> None:
    shop = web(cluster, "shop")
    running(cluster, "-n", "shop", "--field-selector", "metadata.name=client", count=1)
    assert sorted(p["spec"]["nodeName"] for p in shop.values()) == ["node-1", "node-2"]
    serving(cluster, "shop/client", *shop.values())
    before = {node: len(access(cluster, node)) for node in ("node-1", "node-2")}
    with sniffing(cluster, "node-1", "any") as packets:
        for target in shop.values():
            request(cluster, "shop/client", target)
    assert MARKER not in packets.text(), "plaintext of a meshed request on node-1's links"
    assert any(on_port(line, 18001) for line in packets.lines), "the capture saw no tunnel"

    for target in shop.values():
        ip = target["status"]["podIP"]
        ours = outbound(cluster, before["node-1"], len(shop))
        out = [r for r in ours if r["direction"] == "outbound" and r["destination"] == f"{ip}:8080"]
        assert len(out) == 1, ours
        assert out[0]["pod"] == "client"
        assert out[0]["identity"] == f"{TRUST}/ns/shop/sa/default"
        assert out[0]["destination_pod"] == target["metadata"]["name"]
        assert out[0]["peer_identity"] == f"{TRUST}/ns/shop/sa/web"
        assert (out[0]["route"], out[0]["result"]) == ("tunnel", "ok")
        node = target["spec"]["nodeName"]

        def inbound(node: str = node, ip: str = ip) -> list[dict[str, Any]]:
            return [
                r
                for r in access(cluster, node)[before[node] :]
                if r["direction"] == "inbound"
                and r["destination"] == f"{ip}:8080"
                and r["bytes_sent"] > 0  # not a readiness probe of serving()
            ]

        far = wait_for(f"the inbound record on {node}", inbound, timeout=10)
        assert len(far) == 1
        assert far[0]["pod"] == target["metadata"]["name"]
        assert far[0]["identity"] == f"{TRUST}/ns/shop/sa/web"
        assert far[0]["peer_identity"] == f"{TRUST}/ns/shop/sa/default"
        assert (far[0]["route"], far[0]["result"]) == ("tunnel", "ok")
        assert far[0]["request_id"] == out[0]["request_id"]

    # The metrics of each edge name the workloads: the Deployment (not its pods), a bare pod.
    edge = {
        "source_workload": "client",
        "source_workload_namespace": "shop",
        "source_principal": f"{TRUST}/ns/shop/sa/default",
        "destination_workload": "web",
        "destination_workload_namespace": "shop",
        "destination_principal": f"{TRUST}/ns/shop/sa/web",
        "connection_security_policy": "mutual_tls",
    }
    for node, reporter in (("node-1", "source"), ("node-2", "destination")):
        opened = edge_total(cluster, node, "smesh_tcp_connections_opened_total", reporter, edge)
        assert opened >= (len(shop) if reporter == "source" else 1)


def edge_total(lab: Lab, node: str, name: str, reporter: str, labels: dict[str, str]) -> float:
    """The sum of *name*'s series on *node* with *reporter* and *labels*."""
    reply = admin_client.get("127.0.0.1", 15020, "/metrics", netns=f"{lab.name}.{node}")
    wanted = {**labels, "reporter": reporter}
    return sum(
        sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
        if sample.name == name and wanted.items() <= sample.labels.items()
    )


def test_the_same_app_in_a_namespace_not_opted_in_is_plain_tcp(cluster: Lab) -> None:
    plain = web(cluster, "plain")
    running(cluster, "-n", "plain", "--field-selector", "metadata.name=client", count=1)
    serving(cluster, "plain/client", *plain.values())
    before = {node: len(access(cluster, node)) for node in ("node-1", "node-2")}
    for target in plain.values():
        assert meshed(cluster, target) is None
        assert attached_programs(Path(sandbox_of(cluster, target)["cgroup"])) == []
    with sniffing(cluster, "node-1", "any") as packets:
        for target in plain.values():
            request(cluster, "plain/client", target)
    seen = packets.text()
    assert f"POST /path-{MARKER}" in seen
    assert f"echo /path-{MARKER} body-{MARKER}" in seen
    assert not [line for line in packets.lines if on_port(line, 18001)]
    for node in ("node-1", "node-2"):
        assert access(cluster, node)[before[node] :] == []  # not through any agent

    # A meshed client reaches them too, in plain TCP (nonMeshed: passthrough), through its
    # agent, which expects no identity there.
    with sniffing(cluster, "node-1", "any") as packets:
        for target in plain.values():
            request(cluster, "shop/client", target, "/from-shop")
    assert f"POST /path-{MARKER}/from-shop" in packets.text()
    out = outbound(cluster, before["node-1"], len(plain))
    assert sorted(r["destination"] for r in out) == sorted(
        f"{p['status']['podIP']}:8080" for p in plain.values()
    )
    assert {(r["route"], r["result"], r["peer_identity"]) for r in out} == {
        ("passthrough", "ok", "")
    }


def test_scaling_up_meshes_new_pods_and_scaling_down_releases_them(cluster: Lab) -> None:
    before = web(cluster, "shop")
    kubectl(cluster, "scale", "-n", "shop", "deployment", "web", "--replicas=4")
    try:
        now = web(cluster, "shop", count=4)
        new = [p for name, p in now.items() if name not in before]
        assert len(new) == 2
        for target in new:
            # Running means its sandbox's ADD came back, which the agent answers only when
            # the pod's capture is attached and its listeners are open: meshed at once.
            assert meshed(cluster, target) is not None
            assert len(attached_programs(Path(sandbox_of(cluster, target)["cgroup"]))) >= 5
        wait_for("the new pods' certificates", lambda: ready(cluster, *new), timeout=30)
        serving(cluster, "shop/client", *new)
        marks = {node: len(access(cluster, node)) for node in ("node-1", "node-2")}
        for target in new:
            request(cluster, "shop/client", target)
        tunnelled = [
            r["destination"]
            for r in outbound(cluster, marks["node-1"], len(new))
            if r["route"] == "tunnel"
        ]
        assert sorted(tunnelled) == sorted(f"{p['status']['podIP']}:8080" for p in new)
    except BaseException:  # the module's later tests expect the two replicas they began with
        kubectl(cluster, "scale", "-n", "shop", "deployment", "web", "--replicas=2")
        raise

    ids = {name: cgroup_id(cluster, p) for name, p in now.items()}
    kubectl(cluster, "scale", "-n", "shop", "deployment", "web", "--replicas=2")
    left = web(cluster, "shop")
    gone = [p for name, p in now.items() if name not in left]
    assert len(gone) == 2
    for target in gone:
        wait_for(
            f"{target['metadata']['name']} to be released",
            lambda t=target: meshed(cluster, t) is None,
            timeout=30,
        )
        released(cluster, target, ids[target["metadata"]["name"]])
    for target in left.values():
        request(cluster, "shop/client", target)


def test_a_pod_deleted_mid_transfer_releases_everything_and_the_agent_serves_on(
    cluster: Lab,
) -> None:
    shop = web(cluster, "shop")
    target = next(p for p in shop.values() if p["spec"]["nodeName"] == "node-2")
    name, ip = target["metadata"]["name"], target["status"]["podIP"]
    the_id = cgroup_id(cluster, target)
    agent_pid = state.load(cluster.name).agents["node-2"].pid  # type: ignore[union-attr]
    download = cluster.spawn(
        "shop/client",
        ["curl", "-sS", "-o", "/dev/null", "--max-time", "120", f"http://{ip}:8080/slow"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(
        "the download to flow through node-2's agent",
        lambda: (w := meshed(cluster, target)) is not None and w["active_connections"] > 0,
        timeout=30,
    )
    assert [c for c in connections(cluster, "node-1") if f"{ip}:8080" in json.dumps(c)]
    kubectl(cluster, "delete", "pod", "-n", "shop", name, "--timeout=60s")
    _, err = download.communicate(timeout=60)
    assert download.returncode != 0, f"the download outlived its server: {err}"
    released(cluster, target, the_id)
    wait_for(
        "both agents to close the download's connections",
        lambda: (
            not [
                c
                for node in ("node-1", "node-2")
                for c in connections(cluster, node)
                if f"{ip}:" in json.dumps(c)
            ]
        ),
        timeout=15,
    )

    # The agent kept running and serves the others, and the replacement pod, at once.
    assert state.load(cluster.name).agents["node-2"].pid == agent_pid  # type: ignore[union-attr]
    assert (
        admin_client.get("127.0.0.1", 15020, "/healthz", netns=f"{cluster.name}.node-2").status
        == 200
    )
    now = web(cluster, "shop")
    assert name not in now
    wait_for("the replacement's certificate", lambda: ready(cluster, *now.values()), timeout=30)
    serving(cluster, "shop/client", *now.values())
    for other in now.values():
        request(cluster, "shop/client", other)


def test_a_force_deleted_pod_stays_captured_until_its_sandbox_is_torn_down(cluster: Lab) -> None:
    # A pod stuck in Terminating (its app ignores SIGTERM) is force-deleted, as people do:
    # the Pod object is gone at once while the kubelet waits out the grace period before it
    # kills the app and tears the sandbox down. Meanwhile it must not go out uncaptured.
    remote = next(p for p in web(cluster, "shop").values() if p["spec"]["nodeName"] == "node-2")
    url = f"http://{remote['status']['podIP']}:8080/stubborn-{MARKER}"
    loop = f"trap '' TERM; while true; do curl -s -o /dev/null --max-time 1 {url}; sleep 0.2; done"
    stubborn = pod("stubborn", "shop", "node-1", terminationGracePeriodSeconds=8)
    stubborn["spec"]["containers"] = [
        {"name": "main", "image": "none", "command": ["sh", "-c", loop]}
    ]
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(stubborn))
    found = running(cluster, "-n", "shop", "--field-selector", "metadata.name=stubborn", count=1)
    target = found["stubborn"]
    ip, sandbox = target["status"]["podIP"], sandbox_of(cluster, target)
    the_id = cgroup_id(cluster, target)
    mark = len(access(cluster, "node-1"))
    wait_for(
        "stubborn's requests to go through the tunnel",
        lambda: [r for r in access(cluster, "node-1")[mark:] if r["pod"] == "stubborn"],
        timeout=30,
    )
    with sniffing(cluster, "node-1", "any") as packets:
        kubectl(cluster, "delete", "pod", "-n", "shop", "stubborn", "--wait=false")
        wait_for(
            "stubborn to be terminating",
            lambda: pods(cluster, "-n", "shop")["stubborn"]["metadata"].get("deletionTimestamp"),
        )
        kubectl(cluster, "delete", "pod", "-n", "shop", "stubborn", "--force", "--grace-period=0")
        wait_for("the kubelet to tear the sandbox down", lambda: not netns.exists(sandbox["netns"]))
    plain = [line for line in packets.lines if between(line, ip, 8080)]
    assert plain == [], f"stubborn's connects left uncaptured: {plain[:3]}"
    assert MARKER not in packets.text()
    released(cluster, target, the_id)


def test_opted_out_and_host_network_pods_are_never_captured(cluster: Lab) -> None:
    extra = [
        pod("optout", "shop", "node-1", labels={"smesh.io/mesh": "disabled"}),
        pod("hostnet", "shop", "node-1", hostNetwork=True),
    ]
    kubectl(
        cluster,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": extra}),
    )
    found = running(cluster, "-n", "shop", "-l", "app!=web", count=3)  # with the client
    shop = web(cluster, "shop")
    remote = next(p for p in shop.values() if p["spec"]["nodeName"] == "node-2")
    plain = next(p for p in web(cluster, "plain").values() if p["spec"]["nodeName"] == "node-2")
    refused_before = metric(
        cluster,
        "node-2",
        "smesh_capture_events_total",
        'decision="plaintext_refused",namespace="shop",workload="web"',  # the Deployment
    )
    for name in ("optout", "hostnet"):
        assert meshed(cluster, found[name]) is None
        cgroup = Path(sandbox_of(cluster, found[name])["cgroup"])
        assert f"/pod{found[name]['metadata']['uid']}" in str(cgroup)
        assert attached_programs(cgroup) == [], name
        # Their connects leave uncaptured: plain TCP reaches a pod that is not meshed ...
        request(cluster, f"shop/{name}", plain)
        # ... and a meshed pod refuses plaintext from outside the mesh (the default
        # capture.inboundPlaintext: refuse): its SYNs are dropped, the connect times out.
        with sniffing(cluster, "node-1", "any") as packets:
            proc = refused(cluster, f"shop/{name}", remote)
        assert proc.returncode == 28, proc.stderr  # curl: connect timed out
        syns = [
            line
            for line in packets.lines
            if f"> {remote['status']['podIP']}.8080:" in line and "[S]" in line
        ]
        assert syns, f"{name}'s connect did not leave node-1 in plain TCP"
    refused_after = metric(
        cluster,
        "node-2",
        "smesh_capture_events_total",
        'decision="plaintext_refused",namespace="shop",workload="web"',  # the Deployment
    )
    assert refused_after > refused_before
    for name in ("optout", "hostnet"):
        assert attached_programs(Path(sandbox_of(cluster, found[name])["cgroup"])) == []


def test_namespace_labels_mesh_and_release_running_pods_live(cluster: Lab) -> None:
    shop = [*web(cluster, "shop").values(), pods(cluster, "-n", "shop")["client"]]
    plain = [*web(cluster, "plain").values(), pods(cluster, "-n", "plain")["client"]]
    targets = [p for p in shop if p["metadata"]["name"] != "client"]
    ids = {p["metadata"]["uid"]: cgroup_id(cluster, p) for p in shop}

    kubectl(cluster, "label", "namespace", "shop", "smesh.io/mesh-")
    wait_for(
        "shop's pods to be released",
        lambda: all(meshed(cluster, p) is None for p in shop),
        timeout=30,
    )
    for p in shop:
        released_live = attached_programs(Path(sandbox_of(cluster, p)["cgroup"]))
        assert released_live == [], p["metadata"]["name"]
        assert not [link for link in libbpf.links() if link.cgroup_id == ids[p["metadata"]["uid"]]]
    with sniffing(cluster, "node-1", "any") as packets:
        for target in targets:
            request(cluster, "shop/client", target, "/off")
    assert f"POST /path-{MARKER}/off" in packets.text()  # plain now

    # On again: the same running pods are meshed (no new sandbox, no CNI call) ...
    kubectl(cluster, "label", "namespace", "shop", "smesh.io/mesh=enabled")
    # ... and so are pods that started unmeshed, once their namespace opts in.
    kubectl(cluster, "label", "namespace", "plain", "smesh.io/mesh=enabled")
    wait_for(
        "both namespaces' pods to be meshed", lambda: ready(cluster, *shop, *plain), timeout=30
    )
    marks = {node: len(access(cluster, node)) for node in ("node-1", "node-2")}
    with sniffing(cluster, "node-1", "any") as packets:
        for target in targets:
            request(cluster, "shop/client", target, "/on")
        for target in plain:
            if target["metadata"]["name"] != "client":
                request(cluster, "plain/client", target, "/on")
    assert MARKER not in packets.text()
    opted_out = [
        p for name, p in pods(cluster, "-n", "shop").items() if name in ("optout", "hostnet")
    ]
    assert len(opted_out) == 2
    for p in opted_out:  # the namespace's label never overrides these
        assert meshed(cluster, p) is None
        assert attached_programs(Path(sandbox_of(cluster, p)["cgroup"])) == []
    records = outbound(cluster, marks["node-1"], 4)
    # The two clients share a name: each has its own capture counters.
    for namespace in ("shop", "plain"):
        wait_for(
            f"{namespace}/client's captured connects to be counted",
            lambda ns=namespace: (
                metric(
                    cluster,
                    "node-1",
                    "smesh_capture_events_total",
                    f'decision="captured",namespace="{ns}",workload="client"',
                )
                >= 2
            ),
            timeout=10,
        )
    assert len(records) == 4
    assert all(r["route"] == "tunnel" and r["result"] == "ok" for r in records)
    assert {r["peer_identity"] for r in records} == {
        f"{TRUST}/ns/shop/sa/web",
        f"{TRUST}/ns/plain/sa/web",
    }


def test_lab_down_leaves_nothing(cluster: Lab) -> None:
    lab = state.load(cluster.name)
    assert lab is not None
    assert lab.signer is not None
    processes = [
        *lab.control_plane.values(),
        *lab.kubelets.values(),
        *lab.agents.values(),
        lab.signer,
    ]
    assert len(processes) == 9
    assert all(p.alive() for p in processes)
    footprint = Footprint.of(cluster)
    assert footprint.links
    etcd = kubepaths.etcd_dir(cluster.name)
    assert etcd.is_dir()

    smesh("lab", "down", "--name", cluster.name)
    footprint.assert_gone()
    assert not [p for p in processes if p.alive()]
    assert not etcd.exists()
    assert not state.directory(cluster.name).exists()
