"""The lab plan: names, fill order and addresses are a pure function of three numbers."""

from __future__ import annotations

import ipaddress
import re

import pytest

from smesh.lab import topology
from smesh.lab.errors import InvalidLabSpec, UnknownMember
from smesh.lab.topology import DNS_IP4, plan


def test_default_lab_fills_pods_node_by_node() -> None:
    topo = topology.plan()
    assert [(p.name, p.node) for p in topo.pods] == [
        ("pod-1", "node-1"),
        ("pod-2", "node-1"),
        ("pod-3", "node-2"),
        ("pod-4", "node-2"),
    ]
    assert [n.name for n in topo.nodes] == ["node-1", "node-2"]


def test_each_node_owns_its_slash_24_and_pods_get_addresses_in_it() -> None:
    topo = topology.plan("x", nodes=3, pods_per_node=4)
    for node in topo.nodes:
        assert node.pod_cidr4 == ipaddress.IPv4Network(f"198.18.{node.index}.0/24")
        for pod in topo.pods_on(node.name):
            assert pod.ip4 in node.pod_cidr4
            assert pod.ip6 in node.pod_cidr6
            assert pod.ip4 != node.gateway4
    ips = [p.ip4 for p in topo.pods] + [p.ip6 for p in topo.pods]
    assert len(set(ips)) == len(ips)


def test_node_addresses_are_outside_the_pod_cidrs() -> None:
    topo = topology.plan("x", nodes=4)
    for node in topo.nodes:
        assert node.ip4 not in topology.POD_CIDR4
        assert node.ip6 not in topology.POD_CIDR6
        assert node.ip4 in topology.FABRIC4


def test_names_carry_the_lab_name_so_labs_coexist() -> None:
    a, b = topology.plan("a"), topology.plan("b")
    assert not set(a.netns_names) & set(b.netns_names)
    assert a.pod("pod-1").netns == "a.pod-1"
    assert a.pod("pod-3").cgroup == "smesh-lab-a/node-2/pod-3"
    assert a.node("node-1").host_cgroup == "smesh-lab-a/node-1/host"


def test_identities_default_and_override() -> None:
    topo = topology.plan("x", identities={"pod-3": ("payments", "api")})
    assert (topo.pod("pod-1").namespace, topo.pod("pod-1").service_account) == ("default", "pod-1")
    assert (topo.pod("pod-3").namespace, topo.pod("pod-3").service_account) == ("payments", "api")


def test_identity_for_a_missing_pod_is_an_error() -> None:
    with pytest.raises(UnknownMember, match="pod-9"):
        topology.plan("x", identities={"pod-9": ("a", "b")})


@pytest.mark.parametrize(
    "text",
    ["pod-1", "pod-1=ns", "pod-1=/sa", "=ns/sa", "pod-1=NS/sa", "pod-1=ns/s_a"],
)
def test_bad_identity_option_is_rejected(text: str) -> None:
    with pytest.raises(InvalidLabSpec, match="--identity"):
        topology.parse_identity(text)


@pytest.mark.parametrize("name", ["a/b", "", "A", "1abc", "with.dot", "x" * 17, "sp ace"])
def test_bad_lab_names_are_rejected_with_the_name_in_the_message(name: str) -> None:
    with pytest.raises(InvalidLabSpec, match="invalid lab name"):
        topology.plan(name)


@pytest.mark.parametrize(("nodes", "pods"), [(0, 2), (-1, 2), (255, 1), (2, 0), (2, 251)])
def test_sizes_out_of_range_are_rejected(nodes: int, pods: int) -> None:
    with pytest.raises(InvalidLabSpec, match="must be between"):
        topology.plan("x", nodes, pods)


def test_unknown_member_lists_what_exists() -> None:
    topo = topology.plan("x")
    with pytest.raises(UnknownMember, match=r"no pod or node 'pod-7'.*pod-1, pod-2"):
        topo.member("pod-7")
    with pytest.raises(UnknownMember, match="no node 'node-9'"):
        topo.member("node-9")
    assert topo.member("node-2").name == "node-2"


def test_a_kubernetes_lab_plans_no_pods_and_a_control_namespace() -> None:
    topo = topology.plan("k", nodes=2, pods_per_node=5, kubernetes=True)
    assert topo.pods == ()
    assert topo.netns_names == ["k.fabric", "k.node-1", "k.node-2", "k.control"]
    assert str(topology.CONTROL_IP4) == "198.19.0.250"
    assert str(topology.CONTROL_IP6) == "fd00:198:19::fa"
    assert "k.control" not in topology.plan("k").netns_names


def test_service_cidr_defaults_to_the_slash_24_that_holds_the_dns_service() -> None:
    topo = plan(kubernetes=True)
    assert topo.service_cidr == ipaddress.IPv4Network("198.18.255.0/24")
    assert str(topo.api_service_ip) == "198.18.255.1"


def test_a_larger_service_cidr_keeps_the_dns_address_and_moves_the_api_service() -> None:
    topo = plan(nodes=3, kubernetes=True, service_range="198.18.240.0/20")
    assert topo.service_cidr == ipaddress.IPv4Network("198.18.240.0/20")
    assert DNS_IP4 in topo.service_cidr
    assert str(topo.api_service_ip) == "198.18.240.1"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("nonsense", "not an IPv4 network"),
        ("198.18.240.1/20", "not an IPv4 network"),  # host bits set
        ("fd00::/64", "not an IPv4 network"),
        ("10.96.0.0/12", "inside 198.18.0.0/16"),
        ("198.18.255.0/29", "/16 to /28"),
        ("198.18.224.0/20", "must contain 198.18.255.10"),
        ("198.18.0.0/16", "overlaps the pod ranges of the lab's 2 nodes"),
    ],
)
def test_bad_service_cidrs_are_refused_with_the_reason(text: str, words: str) -> None:
    with pytest.raises(InvalidLabSpec, match=re.escape(words)):
        plan(kubernetes=True, service_range=text)


def test_a_service_cidr_must_start_above_the_last_node() -> None:
    plan(nodes=127, kubernetes=True, service_range="198.18.128.0/17")
    with pytest.raises(InvalidLabSpec, match=r"198\.18\.128\.0/24"):
        plan(nodes=128, kubernetes=True, service_range="198.18.128.0/17")


def test_a_service_cidr_needs_a_kubernetes_lab() -> None:
    with pytest.raises(InvalidLabSpec, match="--kubernetes"):
        plan(service_range="198.18.240.0/20")
