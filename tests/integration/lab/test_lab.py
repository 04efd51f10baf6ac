"""`smesh lab` builds a real cluster: traffic flows pod to pod and nowhere else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from smesh.linux import cgroups, netns
from tests.integration.labkit import SMESH, Lab, LabFactory, smesh, unique_name


def host_network_snapshot() -> dict[str, object]:
    """The host namespace's addresses, routes and links (read-only)."""

    def ip(*args: str) -> object:
        data = json.loads(
            subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
        )
        for entry in data if isinstance(data, list) else []:
            for volatile in ("stats64", "operstate", "linkinfo", "flags"):
                entry.pop(volatile, None)
        return data

    return {"addr": ip("addr"), "route4": ip("-4", "route"), "route6": ip("-6", "route")}


def lab_objects(name: str) -> list[str]:
    """Everything of lab *name* that exists on the machine right now."""
    root = cgroups.v2_root()
    found = [ns for ns in netns.list_names() if ns.startswith(f"{name}.")]
    if (root / f"smesh-lab-{name}").exists():
        found.append("cgroup")
    if Path(f"/run/smesh/labs/{name}").exists():
        found.append("state")
    if Path(f"/sys/fs/bpf/smesh/{name}").exists():
        found.append("pins")
    return found


def echo_roundtrip(lab: Lab, client: str, host: str, port: int, text: str) -> str:
    target = f"TCP6:[{host}]:{port}" if ":" in host else f"TCP:{host}:{port}"
    proc = lab.exec(client, ["socat", "-t5", "-", target], input=text)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_pods_reach_each_other_by_tcp_and_ping_across_nodes_and_on_one_node(lab: Lab) -> None:
    pods = {p["name"]: p for p in lab.status()["pods"]}
    lab.spawn("pod-3", ["socat", "TCP6-LISTEN:7000,ipv6only=0,fork,reuseaddr", "EXEC:cat"])
    lab.spawn("pod-2", ["socat", "TCP-LISTEN:7001,fork,reuseaddr", "EXEC:cat"])
    lab.wait_tcp("pod-1", pods["pod-3"]["ip"], 7000)
    lab.wait_tcp("pod-1", pods["pod-2"]["ip"], 7001)

    assert (
        echo_roundtrip(lab, "pod-1", pods["pod-3"]["ip"], 7000, "across nodes\n")
        == "across nodes\n"
    )
    assert echo_roundtrip(lab, "pod-1", pods["pod-3"]["ip6"], 7000, "over v6\n") == "over v6\n"
    assert echo_roundtrip(lab, "pod-1", pods["pod-2"]["ip"], 7001, "same node\n") == "same node\n"
    for target in (pods["pod-3"]["ip"], pods["pod-2"]["ip"], pods["pod-4"]["ip6"]):
        ping = lab.exec("pod-1", ["ping", "-c1", "-W2", target])
        assert ping.returncode == 0, ping.stdout + ping.stderr


def test_server_sees_the_real_pod_address_of_the_client(lab: Lab) -> None:
    pod3 = lab.pod("pod-3")
    lab.spawn("pod-3", ["socat", "TCP-LISTEN:7002,fork,reuseaddr", "SYSTEM:echo $SOCAT_PEERADDR"])
    lab.wait_tcp("pod-4", pod3["ip"], 7002)
    assert echo_roundtrip(lab, "pod-1", pod3["ip"], 7002, "").strip() == lab.pod("pod-1")["ip"]


def test_a_new_port_on_the_bridge_does_not_cut_the_nodes_pods_off_other_nodes(lab: Lab) -> None:
    """A pod's veth joining its node's bridge (Kubernetes scaling up) leaves the bridge's
    address alone, so the node's other pods keep reaching other nodes at once. A bridge that
    followed its lowest port address dropped them for up to 30 s (their gateway entry)."""
    node = f"{lab.name}.node-1"
    pod3 = lab.pod("pod-3")
    lab.spawn("pod-3", ["socat", "TCP-LISTEN:7003,fork,reuseaddr", "EXEC:cat"])
    for pod in ("pod-1", "pod-2"):  # both now hold the gateway's address
        lab.wait_tcp(pod, pod3["ip"], 7003)

    def bridge_mac() -> str:
        links = json.loads(
            subprocess.run(
                ["ip", "-n", node, "-j", "link", "show", "br0"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        return str(links[0]["address"])

    before = bridge_mac()
    port = f"np{os.getpid() % 100000}"  # lower than any veth's address, as a new pod's may be
    subprocess.run(
        [
            "ip",
            "-n",
            node,
            "link",
            "add",
            port,
            "address",
            "00:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            f"{port}p",
        ],
        check=True,
    )
    try:
        for argv in (["link", "set", port, "master", "br0"], ["link", "set", port, "up"]):
            subprocess.run(["ip", "-n", node, *argv], check=True)
        # One of them may be the port whose address the bridge had (its own packets still
        # arrive): the other is not.
        for pod in ("pod-1", "pod-2"):
            proc = lab.exec(
                pod, ["socat", "-t3", "-", f"TCP:{pod3['ip']}:7003,connect-timeout=3"], input="x\n"
            )
            assert (proc.returncode, proc.stdout) == (0, "x\n"), f"{pod}: {proc.stderr}"
        assert bridge_mac() == before
    finally:
        subprocess.run(["ip", "-n", node, "link", "del", port], check=False)


def test_a_pod_cannot_reach_the_host_namespaces_addresses(lab: Lab) -> None:
    host_addrs = [
        a["local"]
        for link in json.loads(
            subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
        )
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]
    assert host_addrs, "the host has no global address to test against"
    for addr in host_addrs:
        ping = lab.exec("pod-1", ["ping", "-c1", "-W1", addr])
        assert ping.returncode != 0, f"pod-1 reached host address {addr}"
        target = f"TCP6:[{addr}]:22" if ":" in addr else f"TCP:{addr}:22"
        tcp = lab.exec("pod-1", ["socat", "-u", "OPEN:/dev/null", f"{target},connect-timeout=1"])
        assert tcp.returncode != 0, f"pod-1 opened a TCP connection to host address {addr}"


def test_lab_up_and_down_leave_the_host_namespace_unchanged(lab_factory: LabFactory) -> None:
    before = host_network_snapshot()
    lab = lab_factory("--nodes", "3", "--pods-per-node", "1")
    assert host_network_snapshot() == before
    smesh("lab", "down", "--name", lab.name)
    assert host_network_snapshot() == before


def test_exec_runs_in_the_pods_cgroup_and_network_namespace(lab: Lab) -> None:
    pod = lab.pod("pod-2")
    cgroup_line = lab.exec("pod-2", ["cat", "/proc/self/cgroup"]).stdout
    expected = "0::/" + str(Path(pod["cgroup"]).relative_to(cgroups.v2_root()))
    assert expected in cgroup_line.splitlines()

    ns_link = lab.exec("pod-2", ["readlink", "/proc/self/ns/net"]).stdout.strip()
    assert ns_link == f"net:[{netns.inode_of(pod['netns'])}]"
    addrs = lab.exec("pod-2", ["ip", "-br", "-4", "addr", "show", "eth0"]).stdout
    assert pod["ip"] in addrs


def test_exec_passes_stdio_through_and_returns_the_exit_status(lab: Lab) -> None:
    echoed = lab.exec("pod-1", ["cat"], input="stdin reaches the pod\n")
    assert echoed.stdout == "stdin reaches the pod\n"
    failed = lab.exec("pod-1", ["sh", "-c", "echo oops >&2; exit 7"])
    assert failed.returncode == 7
    assert failed.stderr == "oops\n"


def test_exec_takes_the_lab_name_after_the_pod_as_well(lab: Lab) -> None:
    """`smesh status --lab N` is how other commands name a lab; exec takes it either way."""
    for option in ("--lab", "--name"):
        proc = smesh("lab", "exec", "pod-1", option, lab.name, "--", "ip", "-br", "addr")
        assert lab.pod("pod-1")["ip"] in proc.stdout


def test_exec_on_a_node_runs_outside_every_pod(lab: Lab) -> None:
    node = lab.status()["nodes"][0]
    line = lab.exec("node-1", ["cat", "/proc/self/cgroup"]).stdout
    assert f"0::/smesh-lab-{lab.name}/node-1/host" in line.splitlines()
    assert node["ip"] in lab.exec("node-1", ["ip", "-br", "addr", "show", "eth0"]).stdout


def test_status_json_has_the_stable_shape(lab: Lab) -> None:
    doc = lab.status()
    assert [n["name"] for n in doc["nodes"]] == ["node-1", "node-2"]
    assert [p["name"] for p in doc["pods"]] == ["pod-1", "pod-2", "pod-3", "pod-4"]
    for node in doc["nodes"]:
        assert {"name", "netns"} <= node.keys()
        assert node["netns"] in netns.list_names()
    for pod in doc["pods"]:
        assert {"name", "node", "ip", "netns", "cgroup", "meshed"} <= pod.keys()
        assert pod["meshed"] is False  # the fixture lab is --no-mesh
        assert Path(pod["cgroup"]).is_dir()
    assert doc["pods"][2]["node"] == "node-2"
    assert doc["pods"][2]["ip"] == "198.18.2.2"


def test_two_labs_with_different_names_coexist(lab_factory: LabFactory) -> None:
    a = lab_factory("--no-mesh", "--nodes", "1")
    b = lab_factory("--no-mesh", "--nodes", "1")
    for one in (a, b):
        one.spawn("pod-2", ["socat", "TCP-LISTEN:7003,fork,reuseaddr", "EXEC:cat"])
        one.wait_tcp("pod-1", one.pod("pod-2")["ip"], 7003)
    smesh("lab", "down", "--name", a.name)
    assert lab_objects(a.name) == []
    assert echo_roundtrip(b, "pod-1", b.pod("pod-2")["ip"], 7003, "still here\n") == "still here\n"


def test_down_removes_everything_and_is_safe_to_repeat(lab_factory: LabFactory) -> None:
    lab = lab_factory("--no-mesh")
    sleeper = lab.spawn("pod-1", ["sleep", "300"])
    assert lab_objects(lab.name)
    first = smesh("lab", "down", "--name", lab.name)
    assert "removed" in first.stdout
    assert lab_objects(lab.name) == []
    assert sleeper.wait(timeout=10) != 0  # the lab's processes were stopped
    second = smesh("lab", "down", "--name", lab.name)
    assert "nothing to remove" in second.stdout


def test_up_refuses_an_existing_lab_and_says_to_run_down(lab: Lab) -> None:
    proc = smesh("lab", "up", "--name", lab.name, check=False)
    assert proc.returncode != 0
    expected = f"lab {lab.name!r} already exists; run `smesh lab down --lab {lab.name}` first"
    assert proc.stderr.strip() == f"smesh: error: {expected}"


def test_down_cleans_a_lab_whose_up_was_killed_midway() -> None:
    name = unique_name("k")
    try:
        for delay in (0.15, 0.3):
            up = subprocess.Popen(
                [*SMESH, "lab", "up", "--name", name, "--nodes", "4", "--pods-per-node", "8"]
            )
            time.sleep(delay)
            up.send_signal(signal.SIGKILL)
            up.wait()
            if lab_objects(name):
                again = smesh("lab", "up", "--name", name, check=False)
                assert again.returncode != 0
                assert "lab down" in again.stderr
            smesh("lab", "down", "--name", name)
            assert lab_objects(name) == []
    finally:
        smesh("lab", "down", "--name", name, check=False)


def test_processes_killed_with_sigkill_leave_nothing_after_down(lab_factory: LabFactory) -> None:
    lab = lab_factory("--no-mesh")
    procs = [lab.spawn(pod, ["sleep", "300"]) for pod in ("pod-1", "pod-4")]
    lab_cgroup = cgroups.v2_root() / f"smesh-lab-{lab.name}"
    deadline = time.monotonic() + 10
    while len(cgroups.pids(lab_cgroup)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # until both have joined their pods
    for member_pid in cgroups.pids(lab_cgroup):
        os.kill(member_pid, signal.SIGKILL)
    for proc in procs:
        proc.wait(timeout=10)
    smesh("lab", "down", "--name", lab.name)
    assert lab_objects(lab.name) == []
