"""The resolv.conf the lab kubelet writes for a pod, per dnsPolicy and dnsConfig."""

from __future__ import annotations

from lightkube.models.core_v1 import (
    Container,
    PodDNSConfig,
    PodDNSConfigOption,
    PodSpec,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod

from smesh.lab.kubelet_dns import MAX_SEARCH_DOMAINS, parse, policy, resolv_conf

NODE = "search corp.example\nnameserver 10.255.255.53\nnameserver 10.255.255.54\noptions rotate\n"
DNS = "198.18.255.10"


def pod(
    dns_policy: str | None = None,
    host_network: bool = False,
    config: PodDNSConfig | None = None,
) -> Pod:
    return Pod(
        metadata=ObjectMeta(name="client", namespace="shop"),
        spec=PodSpec(
            containers=[Container(name="c")],
            dnsPolicy=dns_policy,
            hostNetwork=host_network,
            dnsConfig=config,
        ),
    )


def render(p: Pod) -> str | None:
    return resolv_conf(p, DNS, "cluster.local", NODE)


def test_cluster_first_is_the_default_and_searches_the_pod_s_namespace_first() -> None:
    expected = (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 198.18.255.10\n"
        "options ndots:5\n"
    )
    assert render(pod()) == expected
    assert render(pod("ClusterFirst")) == expected


def test_host_network_and_default_keep_the_node_s_file_unless_configured() -> None:
    assert policy(pod("ClusterFirst", host_network=True)) == "host"
    assert render(pod("ClusterFirst", host_network=True)) is None
    assert render(pod("Default")) is None
    # ClusterFirstWithHostNet: the cluster's, on the node's network too
    assert render(pod("ClusterFirstWithHostNet", host_network=True)) == render(pod())
    # Default with dnsConfig: the node's file with the pod's additions
    extra = PodDNSConfig(searches=["extra.example"])
    assert render(pod("Default", config=extra)) == (
        "search corp.example extra.example\n"
        "nameserver 10.255.255.53\nnameserver 10.255.255.54\noptions rotate\n"
    )


def test_none_takes_only_the_pod_s_dns_config() -> None:
    config = PodDNSConfig(
        nameservers=["198.18.255.10"],
        searches=["example.internal"],
        options=[PodDNSConfigOption(name="ndots", value="2"), PodDNSConfigOption(name="edns0")],
    )
    assert render(pod("None", config=config)) == (
        "search example.internal\nnameserver 198.18.255.10\noptions ndots:2 edns0\n"
    )
    assert render(pod("None")) == ""


def test_dns_config_merges_into_cluster_first_with_the_kubelet_s_limits() -> None:
    config = PodDNSConfig(
        nameservers=[DNS, "198.18.255.53", "198.18.255.54", "198.18.255.55"],
        searches=["svc.cluster.local", *(f"d{i}.example" for i in range(40))],
        options=[PodDNSConfigOption(name="ndots", value="1")],
    )
    text = render(pod(config=config))
    assert text is not None
    conf = parse(text)
    assert conf.nameservers == [DNS, "198.18.255.53", "198.18.255.54"]  # duplicate dropped, 3
    assert conf.searches[:4] == [
        "shop.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
        "d0.example",
    ]
    assert len(conf.searches) == MAX_SEARCH_DOMAINS
    assert conf.options == {"ndots": "1"}  # the pod's value wins


def test_parse_reads_what_glibc_reads() -> None:
    conf = parse(
        "# comment\ndomain a.example\nsearch b.example c.example ; x\nnameserver 1.2.3.4\n"
    )
    assert conf.searches == ["b.example", "c.example"]
    assert conf.nameservers == ["1.2.3.4"]
