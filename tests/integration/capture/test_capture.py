"""Capture in a real lab: what is redirected, what is not, and what the proxy learns.

Every test runs in both modes (eBPF and the nftables fallback) unless it is about eBPF
itself. The test listener stands in for the agent's outbound listener: it runs in the
node's agent cgroup inside the pod's namespace and answers each connection with what
``original_destination()`` returns, so a client knows whether it was captured and where
the proxy would have sent it.
"""

from __future__ import annotations

import errno
import json
import time

import pytest

from smesh.capture import CaptureConfig, libbpf, pins, system
from smesh.capture import lab as capture_lab
from smesh.capture.ebpf import EbpfCapture
from smesh.capture.errors import CaptureError
from smesh.linux import cgroups, netns
from tests.integration.capture.conftest import EXCLUDED, OWNER, PY, Harness, wait_line
from tests.integration.labkit import smesh


def test_a_captured_connect_reaches_the_listener_with_its_exact_original_destination(
    captured: Harness,
) -> None:
    captured.listener("pod-1")
    cases = [
        (("198.18.2.2", 80), "ORIG 198.18.2.2 80"),  # another node's pod
        (("198.18.1.3", 9000), "ORIG 198.18.1.3 9000"),  # a pod on the same node
        (("fd00:198:18:2::2", 8080), "ORIG fd00:198:18:2::2 8080"),  # IPv6
    ]
    for (host, port), answer in cases:
        result = captured.client("pod-1", "tcp", host, port)
        assert result["reply"] == answer, result
        # The app sees the peer it dialled, not the listener (like NAT under nftables).
        assert result["peername"] == [host, port], result
    # A dual-stack socket dialling an IPv4 peer (::ffff:a.b.c.d), the way Java apps do.
    result = captured.client("pod-1", "tcp", "198.18.2.3", 443, "--dual-stack")
    assert result["reply"] == "ORIG 198.18.2.3 443", result


def test_connects_capture_must_leave_alone_reach_their_real_destination(
    captured: Harness,
) -> None:
    captured.listener("pod-1")  # anything wrongly captured would be answered "ORIG ..."
    captured.serve("node-1", "node-1", 7100)
    captured.serve("pod-3", "pod-3", 18001)
    captured.serve("pod-3", "pod-3-excluded", EXCLUDED)
    captured.serve("pod-1", "pod-1", 7300)
    captured.serve("pod-3", "pod-3-udp", 7500, udp=True)
    cases = {
        "not in the mesh (a node)": ("tcp", "198.19.0.1", 7100, "DIRECT node-1"),
        "not in the mesh (v6)": ("tcp", "fd00:198:19::1", 7100, "DIRECT node-1"),
        "the tunnel port": ("tcp", "198.18.2.2", 18001, "DIRECT pod-3"),
        "the tunnel port (v6)": ("tcp", "fd00:198:18:2::2", 18001, "DIRECT pod-3"),
        "a configured excluded port": ("tcp", "198.18.2.2", EXCLUDED, "DIRECT pod-3-excluded"),
        "loopback": ("tcp", "127.0.0.1", 7300, "DIRECT pod-1"),
        "loopback (v6)": ("tcp", "::1", 7300, "DIRECT pod-1"),
        "the pod itself": ("tcp", "198.18.1.2", 7300, "DIRECT pod-1"),
        "the pod itself (v6)": ("tcp", "fd00:198:18:1::2", 7300, "DIRECT pod-1"),
        "UDP": ("udp", "198.18.2.2", 7500, "DIRECT pod-3-udp"),
        "UDP (v6)": ("udp", "fd00:198:18:2::2", 7500, "DIRECT pod-3-udp"),
    }
    for why, (kind, host, port, answer) in cases.items():
        result = captured.client("pod-1", kind, host, port)
        assert result.get("reply") == answer, f"{why}: {result}"
    counters = captured.pod_counters("pod-1")
    assert counters["captured"] == 0
    assert counters["pass_not_mesh"] == 2
    assert counters["pass_port"] == 3
    assert counters["pass_loopback"] == 2
    assert counters["pass_self"] == 2
    assert counters["pass_not_tcp"] >= 2


def test_the_node_and_the_agent_itself_are_never_captured(captured: Harness) -> None:
    captured.listener("pod-1")
    captured.serve("pod-3", "pod-3", 7100)
    # The same destination, from three places: only the app in the pod is captured.
    assert captured.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "ORIG 198.18.2.2 7100"
    assert captured.client("node-1", "tcp", "198.18.2.2", 7100)["reply"] == "DIRECT pod-3"
    from_agent = captured.client_in_agent("pod-1", "tcp", "198.18.2.2", 7100)
    assert from_agent["reply"] == "DIRECT pod-3", from_agent
    assert from_agent["sockname"][0] == "198.18.1.2"  # it left from the pod's own address


def test_two_pods_with_the_same_source_port_get_their_own_destinations(
    captured: Harness,
) -> None:
    captured.listener("pod-1")
    captured.listener("pod-2")
    for port in (40000, 40001, 40002):
        first = captured.spawn_client(
            "pod-1", "tcp", "198.18.2.2", 80, "--bind-port", port, "--hold", 0.5
        )
        second = captured.spawn_client(
            "pod-2", "tcp", "fd00:198:18:2::3", 81, "--bind-port", port, "--hold", 0.5
        )
        third = captured.spawn_client(
            "pod-2", "tcp", "198.18.2.3", 82, "--bind-port", port, "--hold", 0.5
        )
        results = [
            json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1])
            for p in (first, second, third)
        ]
        assert [r["reply"] for r in results] == [
            "ORIG 198.18.2.2 80",
            "ORIG fd00:198:18:2::3 81",
            "ORIG 198.18.2.3 82",
        ]
        assert [r["sockname"][1] for r in results] == [port, port, port]


def test_connection_entries_are_keyed_by_network_namespace(ebpf_captured: Harness) -> None:
    """Two pods' entries with the same client address and port stay apart.

    The listeners run outside the proxy's cgroup here, so nothing moves the entries into
    the accepted sockets and both stay in the map while the clients hold on.
    """
    h = ebpf_captured
    h.listener("pod-1", "host")
    h.listener("pod-2", "host")
    first = h.spawn_client("pod-1", "tcp", "198.18.2.2", 80, "--bind-port", 40100, "--hold", 3)
    second = h.spawn_client("pod-2", "tcp", "198.18.2.3", 81, "--bind-port", 40100, "--hold", 3)
    cookies = {system.netns_cookie(h.pod(p)["netns"]): p for p in ("pod-1", "pod-2")}
    seen: dict[str, tuple[str, int]] = {}
    with pins.PinnedCapture(h.pin_dir("node-1")) as pinned:
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:
            for key, orig in pinned.maps.conns.items():
                if key.port == 40100:
                    address = ".".join(str(b) for b in bytes(orig.addr)[12:])
                    seen[cookies[key.netns_cookie]] = (address, orig.port)
                    assert bytes(key.addr)[12:] == bytes([127, 0, 0, 1])
            time.sleep(0.05)
        assert seen == {"pod-1": ("198.18.2.2", 80), "pod-2": ("198.18.2.3", 81)}
        for proc in (first, second):
            out = proc.communicate(timeout=60)[0]
            assert "NOORIG" in out  # no getsockopt in that cgroup: refused, not guessed
        assert pinned.occupancy().connections == 0


@pytest.mark.timeout(600)
def test_occupancy_returns_to_baseline_after_100000_connections(captured: Harness) -> None:
    netns_name = captured.pod("pod-1")["netns"]
    # Short connections from one pod need many ports: widen the range, and the client
    # closes with SO_LINGER 0 so no TIME_WAIT holds them.
    netns.write_sysctl(netns_name, "net.ipv4.ip_local_port_range", "1024 65535")
    netns.write_sysctl(netns_name, "net.ipv4.tcp_tw_reuse", "1")
    captured.listener("pod-1", "agent", "--quiet")
    before = captured.status()["nodes"][0]
    baseline = before.get("connections", before.get("conntrack_entries"))
    start = time.monotonic()
    result = captured.client("pod-1", "loop", "198.18.2.2", 80, 100_000, "--workers", 4)
    assert result["ok"] == 100_000, result
    assert result["wrong"] == 0
    counters = captured.pod_counters("pod-1")
    assert counters["captured"] == 100_000
    if captured.mode == "ebpf":
        assert counters["tracked"] == counters["handed_over"] == 100_000
        assert counters["map_full"] == counters["denied"] == 0
        assert captured.status()["nodes"][0]["connections"] == baseline == 0
    else:
        # conntrack forgets reset connections after nf_conntrack_tcp_timeout_close (10 s)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            entries = captured.status()["nodes"][0]["conntrack_entries"]
            if entries <= baseline:
                break
            time.sleep(2)
        assert entries <= baseline
    assert time.monotonic() - start < 300


def test_capture_status_reports_mode_pods_and_counters(captured: Harness) -> None:
    captured.listener("pod-1")
    captured.client("pod-1", "tcp", "198.18.2.2", 80)
    doc = captured.status()
    node1 = doc["nodes"][0]
    assert node1["mode"] == captured.mode
    assert [p["name"] for p in node1["pods"]] == ["pod-1", "pod-2"]
    assert [p["id"] for p in node1["pods"]] == ["default/pod-1", "default/pod-2"]
    assert captured.pod_counters("pod-1")["captured"] == 1
    assert captured.pod_counters("pod-2")["captured"] == 0
    text = smesh("capture", "status", "--lab", captured.lab.name).stdout
    assert f"node-1  {captured.mode}" in text
    if captured.mode == "ebpf":
        assert node1["connections"] == 0
        assert node1["connections_capacity"] == 65536
        assert node1["links"] == 2 + 2 * 6  # proxy: 2 programs; each pod: 6


def test_detach_puts_the_pods_back_to_plain_connects(captured: Harness) -> None:
    captured.serve("pod-3", "pod-3", 7100)
    captured.listener("pod-1")
    assert captured.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "ORIG 198.18.2.2 7100"
    out = smesh("capture", "detach", "--lab", captured.lab.name, "--node", "node-1").stdout
    assert out.startswith("node-1: ")
    assert captured.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "DIRECT pod-3"
    assert captured.status()["nodes"][0]["mode"] == "off"
    assert captured.status()["nodes"][1]["mode"] == captured.mode  # node-2 untouched
    if captured.mode == "ebpf":
        assert not captured.pin_dir("node-1").exists()


def test_an_owner_does_not_capture_again_after_a_detach_while_it_ran(harness: Harness) -> None:
    """`smesh capture detach` is the way out while an agent runs: the agent must not
    re-pin links beside maps nobody can find, in a directory another owner could lock."""
    h = harness
    with EbpfCapture(h.pin_dir("node-1"), CaptureConfig.build()) as capture:
        capture.attach_proxy(cgroups.create(h.cgroup("node-1", "agent")))
        info = h.pod("pod-1")
        capture.add_pod("default/pod-1", "pod-1", h.cgroup("node-1", "pod-1"), info["netns"])
        smesh("capture", "detach", "--lab", h.lab.name)
        pod2 = h.pod("pod-2")
        with pytest.raises(CaptureError, match="was detached"):
            capture.add_pod("default/pod-2", "pod-2", h.cgroup("node-1", "pod-2"), pod2["netns"])
        assert not h.pin_dir("node-1").exists()
    h.serve("pod-3", "pod-3", 7100)
    assert h.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "DIRECT pod-3"


def test_a_full_connection_map_fails_closed(harness: Harness) -> None:
    """When the map has no room, the proxy learns nothing and refuses; it never guesses."""
    h = harness
    config = CaptureConfig.build(max_tracked_connections=16)
    with EbpfCapture(h.pin_dir("node-1"), config) as capture:
        capture.attach_proxy(cgroups.create(h.cgroup("node-1", "agent")))
        for pod in ("pod-1", "pod-2"):
            info = h.pod(pod)
            capture.add_pod(f"default/{pod}", pod, h.cgroup("node-1", pod), info["netns"])
        h.listener("pod-2", "host")  # its entries are never handed over: they fill the map
        h.listener("pod-1")
        holder = h.spawn_client("pod-2", "hold", "198.18.2.3", 81, 16, 4)
        wait_line(holder, "HOLDING")
        assert capture.occupancy().connections == 16
        refused = h.client("pod-1", "tcp", "198.18.2.2", 80)
        assert refused["reply"].startswith("NOORIG"), refused
        assert capture.counters("default/pod-1").map_full == 1
        holder.communicate(timeout=30)
        assert capture.occupancy().connections == 0
        assert h.client("pod-1", "tcp", "198.18.2.2", 80)["reply"] == "ORIG 198.18.2.2 80"
        capture.detach_all()


def test_a_restarted_owner_takes_over_and_detach_works_while_it_runs(
    ebpf_captured: Harness,
) -> None:
    h = ebpf_captured
    h.serve("pod-3", "pod-3", 7100)
    with pins.PinnedCapture(h.pin_dir("node-1")) as pinned:
        before = {pin: info for pin, info in pinned.links()}
    old_programs = {info.prog_id for info in before.values()}
    owner = h._start([PY, OWNER, h.lab.name, "node-1", "ebpf"])
    with pins.PinnedCapture(h.pin_dir("node-1")) as pinned:
        after = {pin: info for pin, info in pinned.links()}
        assert [p.name for p in pinned.pods()] == ["pod-1", "pod-2"]
    assert after.keys() == before.keys()
    assert all(after[pin].id == before[pin].id for pin in before)  # the same links...
    assert not {info.prog_id for info in after.values()} & old_programs  # ...new programs
    live = {p.id for p in libbpf.programs()}
    assert not old_programs & live  # the old programs are gone from the kernel
    h.listener("pod-1")
    assert h.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "ORIG 198.18.2.2 7100"

    # The owner still holds every link; an explicit detach detaches them all the same
    # (BPF_LINK_DETACH): the links it holds are left defunct, attached to no cgroup.
    smesh("capture", "detach", "--lab", h.lab.name)
    assert owner.poll() is None
    ours = {info.id for info in after.values()}
    assert all(link.cgroup_id == 0 for link in libbpf.links() if link.id in ours)
    assert not h.pin_dir("node-1").exists()
    assert h.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "DIRECT pod-3"
    owner.kill()
    owner.communicate(timeout=10)
    assert not ours & {link.id for link in libbpf.links()}


def test_an_owner_starts_after_a_cgroup_with_pinned_links_was_removed(
    ebpf_captured: Harness,
) -> None:
    """A crashed agent restarted in a new container leaves its old cgroup's links pinned,
    and the kernel detaches them when that cgroup goes: the next owner must still start."""
    h = ebpf_captured
    gone = cgroups.create(h.cgroup("node-1", f"old-agent-{time.monotonic_ns()}"))
    with EbpfCapture(h.pin_dir("node-1"), capture_lab.lab_config()) as capture:
        capture.attach_proxy(gone)
    with pins.PinnedCapture(h.pin_dir("node-1")) as pinned:
        dead = {info.id for pin, info in pinned.links() if str(gone.stat().st_ino) in str(pin)}
    assert dead
    gone.rmdir()
    deadline = time.monotonic() + 10
    while {link.id for link in libbpf.links() if link.cgroup_id} & dead:
        assert time.monotonic() < deadline, "the kernel never detached the removed cgroup's links"
        time.sleep(0.1)

    h._start([PY, OWNER, h.lab.name, "node-1", "ebpf"])  # the restarted agent
    with pins.PinnedCapture(h.pin_dir("node-1")) as pinned:
        assert not dead & {info.id for _pin, info in pinned.links()}  # unpinned
    h.serve("pod-3", "pod-3", 7100)
    h.listener("pod-1")
    assert h.client("pod-1", "tcp", "198.18.2.2", 7100)["reply"] == "ORIG 198.18.2.2 7100"


@pytest.mark.parametrize("mode", ["ebpf", "nftables"])
def test_after_the_owner_is_killed_captured_connects_are_refused_and_lab_down_cleans_up(
    harness: Harness, mode: str
) -> None:
    h = harness
    h.serve("pod-3", "pod-3", 7100)
    h.serve("node-1", "node-1", 7100)
    owner = h._start([PY, OWNER, h.lab.name, "node-1", mode])
    owner.kill()  # kill -9: no cleanup of any kind
    owner.communicate(timeout=10)
    refused = h.client("pod-1", "tcp", "198.18.2.2", 7100)
    assert refused == {"ok": False, "error": "Connection refused", "errno": errno.ECONNREFUSED}
    assert h.client("pod-1", "tcp", "fd00:198:18:2::2", 7100)["errno"] == errno.ECONNREFUSED
    # ...while what is not captured still works.
    assert h.client("pod-1", "tcp", "198.19.0.1", 7100)["reply"] == "DIRECT node-1"

    links: set[int] = set()
    programs: set[int] = set()
    maps: set[int] = set()
    if mode == "ebpf":
        with pins.PinnedCapture(h.pin_dir("node-1")) as pinned:
            for _pin, info in pinned.links():
                links.add(info.id)
                programs.add(info.prog_id)
            maps.add(libbpf.map_info(pinned.maps.conns.fd).id)
            maps.add(libbpf.map_info(pinned.maps.meta.fd).id)
        assert len(links) == 2 + 2 * 6
    h.stop()
    smesh("lab", "down", "--name", h.lab.name)
    assert not h.pin_dir("node-1").exists()
    assert not links & {link.id for link in libbpf.links()}
    assert not programs & {prog.id for prog in libbpf.programs()}
    # Programs give their maps back after an RCU grace period: allow it a moment.
    deadline = time.monotonic() + 10
    while maps & {m.id for m in libbpf.maps()} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not maps & {m.id for m in libbpf.maps()}


@pytest.mark.parametrize(
    ("listen_in", "accept_in", "answered"),
    [("agent", "host", True), ("host", "agent", False)],
)
def test_the_getsockopt_answer_follows_the_listener_s_cgroup(
    ebpf_captured: Harness, listen_in: str, accept_in: str, answered: bool
) -> None:
    """An accepted socket belongs to its listener's cgroup, not to the accepting process's.

    The agent creates its listeners while in its own cgroup, which is why cgroup/getsockopt
    is attached there; this pins down the kernel behaviour that relies on.
    """
    h = ebpf_captured
    then = str(h.cgroup("node-1", accept_in))
    h.listener("pod-1", listen_in, "--then-cgroup", then)
    reply = h.client("pod-1", "tcp", "198.18.2.2", 80)["reply"]
    assert reply.startswith("ORIG" if answered else "NOORIG"), reply


def link_local(harness: Harness, member: str) -> str:
    """*member*'s IPv6 link-local address on eth0, once duplicate address detection is over."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc = harness.lab.exec(member, ["ip", "-j", "-6", "addr", "show", "dev", "eth0"])
        assert proc.returncode == 0, proc.stderr
        for addr in json.loads(proc.stdout)[0]["addr_info"]:
            if addr.get("scope") == "link" and not addr.get("tentative"):
                return str(addr["local"])
        time.sleep(0.2)
    raise AssertionError(f"{member} has no usable link-local address")


def test_link_local_destinations_are_captured_with_their_address(captured: Harness) -> None:
    # Pods share their node's bridge: a neighbour's fe80:: address reaches it directly.
    # Left uncaptured, that was a way around `nonMeshed: deny`.
    captured.listener("pod-1")
    captured.serve("pod-2", "pod-2", 8080)
    neighbour = link_local(captured, "pod-2")
    result = captured.client("pod-1", "tcp", f"{neighbour}%eth0", 8080)
    counters = captured.pod_counters("pod-1")
    if captured.mode == "ebpf":
        assert result.get("reply") == f"ORIG {neighbour} 8080", result
        assert counters["captured"] == 1
    else:
        # nftables cannot redirect a socket the kernel bound to eth0: refused, never direct.
        assert result.get("errno") == errno.ECONNREFUSED, result
        assert counters["denied"] == 1
    assert counters["pass_not_mesh"] == 0
