"""The nftables fallback's ruleset says what the eBPF programs do, in the same order."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from smesh.capture import CaptureConfig
from smesh.capture.nftables import nft_cgroup_path, ruleset
from smesh.capture.node import CapturedPod

POD = CapturedPod(
    "default/pod-1",
    "pod-1",
    0,
    "lab.pod-1",
    Path("/sys/fs/cgroup/unified/smesh-lab-x/node-1/pod-1"),
    ipaddress.IPv4Address("198.18.1.2"),
    ipaddress.IPv6Address("fd00:198:18:1::2"),
)


def rules(config: CaptureConfig | None = None, pod: CapturedPod = POD) -> list[str]:
    text = ruleset(config or CaptureConfig(), pod, "unified/smesh-lab-x/node-1/pod-1", 3)
    return [line.strip() for line in text.splitlines()]


def test_the_table_is_replaced_atomically_and_only_pod_sockets_enter_it() -> None:
    lines = rules()
    assert lines[:3] == ["table inet smesh", "delete table inet smesh", "table inet smesh {"]
    assert (
        'meta l4proto tcp socket cgroupv2 level 3 "unified/smesh-lab-x/node-1/pod-1" jump capture'
    ) in lines


def test_exclusions_come_before_the_redirect_in_the_ebpf_order() -> None:
    lines = rules(CaptureConfig.build(excluded_ports=[15021]))
    order = [
        "ip daddr 127.0.0.0/8 counter name pass_loopback return",
        "meta nfproto ipv4 ip daddr != @mesh4 counter name pass_not_mesh return",
        "ip daddr 198.18.1.2 counter name pass_self return",
        "ip6 daddr fd00:198:18:1::2 counter name pass_self return",
        "tcp dport @ports counter name pass_port return",
        "meta nfproto ipv4 meta l4proto tcp counter name captured dnat ip to 127.0.0.1:18000",
        "meta nfproto ipv6 meta l4proto tcp counter name captured dnat ip6 to [::1]:18000",
    ]
    positions = [lines.index(rule) for rule in order]
    assert positions == sorted(positions)
    assert "set ports { type inet_service; elements = { 15021, 18000, 18001 }; }" in lines
    assert "set mesh4 { type ipv4_addr; flags interval; elements = { 198.18.0.0/16 }; }" in lines


def test_a_pod_without_ipv6_gets_no_ipv6_self_rule_and_an_empty_set_stays_valid() -> None:
    v4_only = CapturedPod("default/a", "a", 0, "x.a", POD.cgroup, POD.ipv4, None)
    lines = rules(CaptureConfig.build(mesh_cidrs=["fd00:10::/32"]), v4_only)
    assert not any(line.startswith("ip6 daddr fd00") for line in lines)
    # (mesh6 is never empty: IPv6 link-local is always in it)
    assert "set mesh4 { type ipv4_addr; flags interval; }" in lines


def test_refusing_plaintext_drops_handshakes_to_the_pods_listeners_from_outside() -> None:
    lines = rules(CaptureConfig.build(refuse_inbound_plaintext=True, plaintext_ports=[8081]))
    chain = lines[lines.index("chain input {") :]
    assert chain[1] == "type filter hook input priority 0; policy accept;"
    assert chain[2] == 'iif "lo" accept'
    assert chain[3] == (
        "tcp flags & (fin | syn | rst | ack) == syn tcp dport != @plain_ports "
        'socket cgroupv2 level 3 "unified/smesh-lab-x/node-1/pod-1" '
        "counter name plaintext_refused drop"
    )
    assert "set plain_ports { type inet_service; elements = { 8081 }; }" in lines
    assert "chain input {" not in rules()  # allowing plaintext: no filter at all


def test_nft_paths_are_relative_to_sys_fs_cgroup_even_on_hybrid_hosts() -> None:
    hybrid = Path("/sys/fs/cgroup/unified/smesh-lab-x/node-1/pod-1")
    assert nft_cgroup_path(hybrid) == "unified/smesh-lab-x/node-1/pod-1"
    assert nft_cgroup_path(Path("/mnt/cg2/a")) == "../../../mnt/cg2/a"


def test_link_local_is_refused_after_the_exclusions_since_nft_cannot_redirect_it() -> None:
    lines = rules()
    refuse = "ip6 daddr fe80::/10 counter name denied reject with tcp reset"
    assert lines.index("tcp dport @ports counter name pass_port return") < lines.index(refuse)
    assert lines.index(refuse) < lines.index(
        "meta nfproto ipv6 meta l4proto tcp counter name captured dnat ip6 to [::1]:18000"
    )
    assert (
        "set mesh6 { type ipv6_addr; flags interval; elements = { fd00:198:18::/48, fe80::/10 }; }"
    ) in lines
