"""The nftables fallback: a NAT table in each pod's namespace, for hosts without cgroup BPF.

It redirects the same connects the eBPF programs capture (same CIDRs, ports, loopback and
own-address exclusions) to the same listener, and conntrack then answers the proxy's
``SO_ORIGINAL_DST`` exactly as smesh's getsockopt program does in eBPF mode.

Only sockets of the pod's own cgroup are redirected (``socket cgroupv2``), so the agent's
sockets in the pod's namespace — the tunnel's connects, passthrough connects — are never
caught, with no marks for the agent to set and nothing an app could forge. nft resolves
the cgroup path relative to /sys/fs/cgroup when it loads the rule; a v2 hierarchy mounted
elsewhere (hybrid hosts: /sys/fs/cgroup/unified) is reached with a relative path.
With ``refuse_inbound_plaintext`` the same table also drops handshakes from outside the
pod to the pod's listeners, as ``bpf/inbound.bpf.c`` does in eBPF mode.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from smesh.capture.config import LINK_LOCAL6, CaptureConfig
from smesh.capture.errors import CaptureError, NftablesError
from smesh.capture.node import CapturedPod, Mode, Occupancy, PodCounters
from smesh.linux import cgroups, netns
from smesh.linux.errors import NetnsNotFound

log = logging.getLogger(__name__)

TABLE = "smesh"
NFT_CGROUP_BASE = Path("/sys/fs/cgroup")
COUNTERS = (
    "captured",
    "pass_not_mesh",
    "pass_port",
    "pass_loopback",
    "pass_self",
    "pass_not_tcp",
    "plaintext_refused",
    "denied",
)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "") + '"'


def _elements(items: Sequence[object]) -> str:
    return f"elements = {{ {', '.join(str(i) for i in items)} }}; " if items else ""


def ruleset(config: CaptureConfig, pod: CapturedPod, cgroup_path: str, cgroup_level: int) -> str:
    """The pod's table, replacing any earlier one in one atomic transaction.

    *cgroup_path* is as nft wants it (relative to /sys/fs/cgroup), *cgroup_level* the
    pod cgroup's depth in the v2 hierarchy. Rules run in the eBPF programs' order.
    """
    cg = f"socket cgroupv2 level {cgroup_level} {_quote(cgroup_path)}"
    listener4 = f"{config.listener_ipv4}:{config.listener_port}"
    listener6 = f"[{config.listener_ipv6}]:{config.listener_port}"
    capture = [
        "ip daddr 127.0.0.0/8 counter name pass_loopback return",
        "ip6 daddr ::1 counter name pass_loopback return",
        "meta nfproto ipv4 ip daddr != @mesh4 counter name pass_not_mesh return",
        "meta nfproto ipv6 ip6 daddr != @mesh6 counter name pass_not_mesh return",
    ]
    if pod.ipv4 is not None:
        capture.append(f"ip daddr {pod.ipv4} counter name pass_self return")
    if pod.ipv6 is not None:
        capture.append(f"ip6 daddr {pod.ipv6} counter name pass_self return")
    capture += [
        "tcp dport @ports counter name pass_port return",
        # IPv6 link-local: the kernel binds such a socket to its interface (the scope id)
        # before NAT runs, so a redirect to loopback never reaches the listener (measured:
        # the connect times out). Refused here at once, and counted: fail closed.
        f"ip6 daddr {LINK_LOCAL6} counter name denied reject with tcp reset",
        f"meta nfproto ipv4 meta l4proto tcp counter name captured dnat ip to {listener4}",
        f"meta nfproto ipv6 meta l4proto tcp counter name captured dnat ip6 to {listener6}",
    ]
    counters = "".join(f"  counter {name} {{ }}\n" for name in COUNTERS)
    body = "".join(f"    {rule}\n" for rule in capture)
    inbound = ""
    if config.refuse_inbound_plaintext:
        # The eBPF twin: a handshake from outside the pod to a listener of the pod's cgroup
        # (the agent's tunnel listener is in the agent's cgroup) is plaintext: dropped.
        inbound = (
            f"  set plain_ports {{ type inet_service; {_elements(config.plaintext_ports)}}}\n"
            "  chain input {\n"
            "    type filter hook input priority 0; policy accept;\n"
            '    iif "lo" accept\n'
            "    tcp flags & (fin | syn | rst | ack) == syn tcp dport != @plain_ports "
            f"{cg} counter name plaintext_refused drop\n"
            "  }\n"
        )
    return (
        f"table inet {TABLE}\n"
        f"delete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"  comment {_quote(f'smesh capture of pod {pod.name} ({pod.pod_id})')}\n"
        f"  set mesh4 {{ type ipv4_addr; flags interval; {_elements(config.mesh_cidrs4)}}}\n"
        f"  set mesh6 {{ type ipv6_addr; flags interval; {_elements(config.mesh_cidrs6)}}}\n"
        f"  set ports {{ type inet_service; {_elements(config.never_captured_ports)}}}\n"
        f"{counters}"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    meta l4proto tcp {cg} jump capture\n"
        f"    meta l4proto != tcp {cg} counter name pass_not_tcp\n"
        "  }\n"
        "  chain capture {\n"
        f"{body}"
        "  }\n"
        f"{inbound}"
        "}\n"
    )


def nft_cgroup_path(cgroup: Path, base: Path = NFT_CGROUP_BASE) -> str:
    """*cgroup* as nft resolves it: a path relative to /sys/fs/cgroup."""
    return os.path.relpath(cgroup, base)


def _nft(name: str, args: list[str], stdin: str | None = None) -> str:
    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nft", *args], input=stdin, capture_output=True, text=True, check=False
        )

    try:
        proc = netns.run_in(name, run)
    except FileNotFoundError:
        raise NftablesError("the `nft` command is not installed (apt install nftables)") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise NftablesError(
            f"nft {' '.join(args)} in {name}: {lines[0] if lines else f'exit {proc.returncode}'}"
        )
    return proc.stdout


def has_table(name: str) -> bool:
    """Whether namespace *name* holds smesh's capture table."""
    try:
        out = _nft(name, ["-j", "list", "tables", "inet"])
    except (NftablesError, NetnsNotFound):
        return False
    data = json.loads(out or "{}").get("nftables", [])
    return any(item.get("table", {}).get("name") == TABLE for item in data)


def remove_table(name: str) -> bool:
    """Delete smesh's table from namespace *name*; False if there was none (or no netns)."""
    if not netns.exists(name) or not has_table(name):
        return False
    _nft(name, ["delete", "table", "inet", TABLE])
    return True


def read_counters(name: str) -> PodCounters:
    out = _nft(name, ["-j", "list", "counters", "table", "inet", TABLE])
    values = dict.fromkeys(COUNTERS, 0)
    for item in json.loads(out or "{}").get("nftables", []):
        counter = item.get("counter")
        if counter and counter.get("name") in values:
            values[counter["name"]] = int(counter.get("packets", 0))
    return PodCounters(**values)


def conntrack_count(name: str) -> int:
    path = Path("/proc/sys/net/netfilter/nf_conntrack_count")
    try:
        return int(netns.run_in(name, path.read_text).strip())
    except (OSError, ValueError, NetnsNotFound):
        return 0


class NftablesCapture:
    """The nftables backend of :class:`~smesh.capture.node.NodeCapture`."""

    def __init__(self, config: CaptureConfig | None = None) -> None:
        self.config = config or CaptureConfig()
        self._pods: dict[str, CapturedPod] = {}
        self._opened = False

    @property
    def mode(self) -> Mode:
        return "nftables"

    def open(self) -> None:
        self._opened = True

    def close(self) -> None:
        """Nothing to release: the tables live in the pods' namespaces until removed."""
        self._opened = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attach_proxy(self, cgroup: Path) -> None:
        """Nothing to attach: conntrack answers SO_ORIGINAL_DST for every socket."""
        log.debug("nftables capture: conntrack answers SO_ORIGINAL_DST for %s", cgroup)

    def detach_proxy(self, cgroup: Path) -> None:
        del cgroup

    def add_pod(
        self,
        pod_id: str,
        name: str,
        cgroup: Path,
        netns: str,
        *,
        ipv4: ipaddress.IPv4Address | None = None,
        ipv6: ipaddress.IPv6Address | None = None,
    ) -> CapturedPod:
        root = cgroups.v2_root()
        try:
            level = len(cgroup.relative_to(root).parts)
        except ValueError:
            raise CaptureError(f"{cgroup} is not inside the cgroup v2 hierarchy {root}") from None
        if level == 0:
            raise CaptureError(f"refusing to capture the root cgroup {cgroup}")
        if not cgroup.is_dir():
            raise CaptureError(f"cgroup {cgroup} does not exist")
        pod = CapturedPod(pod_id, name, 0, netns, cgroup, ipv4, ipv6)
        _nft(netns, ["-f", "-"], stdin=ruleset(self.config, pod, nft_cgroup_path(cgroup), level))
        self._pods[pod_id] = pod
        log.info("capturing pod %s with nftables in %s", name, netns)
        return pod

    def remove_pod(self, pod_id: str) -> bool:
        pod = self._pods.pop(pod_id, None)
        if pod is None or pod.netns is None:
            return False
        remove_table(pod.netns)
        return True

    def pods(self) -> list[CapturedPod]:
        return sorted(self._pods.values(), key=lambda p: p.name)

    def counters(self, pod_id: str) -> PodCounters:
        pod = self._pods.get(pod_id)
        if pod is None or pod.netns is None:
            raise CaptureError(f"pod {pod_id!r} is not captured on this node")
        return read_counters(pod.netns)

    def occupancy(self) -> Occupancy:
        total = sum(conntrack_count(p.netns) for p in self._pods.values() if p.netns)
        try:
            capacity = int(Path("/proc/sys/net/netfilter/nf_conntrack_max").read_text())
        except (OSError, ValueError):
            capacity = 0
        return Occupancy("nftables", total, capacity, len(self._pods), 0)

    def detach_all(self) -> None:
        for pod_id in list(self._pods):
            self.remove_pod(pod_id)
