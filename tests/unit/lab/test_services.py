"""What the lab deploys for Services and DNS: kube-proxy's configuration, CoreDNS's objects."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from smesh.lab import services
from smesh.lab.controlplane import SERVICE_CIDR
from smesh.lab.topology import plan


def test_kube_proxy_runs_nftables_for_the_lab_pod_cidr_and_leaves_conntrack_alone() -> None:
    node = plan("t", 2, kubernetes=True).node("node-2")
    config = services.kube_proxy_config("t", node)
    assert config["mode"] == "nftables"
    assert config["hostnameOverride"] == "node-2"
    assert config["clusterCIDR"] == "198.18.0.0/16,fd00:198:18::/48"
    assert config["clientConnection"]["kubeconfig"].endswith("/nodes/node-2/kube-proxy.kubeconfig")
    # zero: kube-proxy does not raise the machine-wide nf_conntrack_max / hashsize
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["min"] == 0
    assert config["metricsBindAddress"].startswith("127.0.0.1:")


def test_cluster_dns_is_the_tenth_service_address() -> None:
    network = ipaddress.ip_network(SERVICE_CIDR)
    assert ipaddress.ip_address(services.DNS_IP) == network[10]
    assert ipaddress.ip_address(services.API_SERVICE_IP) == network[1]


def test_corefile_serves_the_cluster_zones_and_answers_nxdomain_for_the_rest() -> None:
    corefile = services.corefile()
    assert "kubernetes cluster.local in-addr.arpa ip6.arpa" in corefile
    assert "forward" not in corefile  # no upstream: the machine's resolvers are never asked
    assert "rcode NXDOMAIN" in corefile
    assert "ready" in corefile


def test_coredns_objects_rbac_service_and_probed_unmeshed_deployment() -> None:
    objects = dict(
        (obj["kind"], (path, obj)) for path, obj in services.coredns_objects(Path("/x/coredns"))
    )
    rules = objects["ClusterRole"][1]["rules"]
    granted = {(g, r) for rule in rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "services"), ("", "namespaces"), ("discovery.k8s.io", "endpointslices")} <= granted
    assert all(set(rule["verbs"]) == {"list", "watch"} for rule in rules)
    path, service = objects["Service"]
    assert path == "/api/v1/namespaces/kube-system/services"
    assert service["metadata"]["name"] == "kube-dns"
    assert service["spec"]["clusterIP"] == services.DNS_IP
    pod = objects["Deployment"][1]["spec"]["template"]
    assert "smesh.io/mesh" not in pod["metadata"].get("labels", {})
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["/x/coredns"]
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/ready",
        "port": 8181,
        "scheme": "HTTP",
    }
    assert pod["spec"]["serviceAccountName"] == "coredns"
    # the account exists before the Deployment's pods need it
    kinds = [obj["kind"] for _path, obj in services.coredns_objects()]
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")
