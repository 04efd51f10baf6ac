"""What a Kubernetes lab has for Services: kube-proxy on every node and CoreDNS as pods.

A real cluster turns a Service into NAT rules on every node (kube-proxy) and a DNS name
(CoreDNS behind the ``kube-dns`` Service); the lab has both, so traffic addressed to a
ClusterIP or a Service name behaves as it would there, with or without the mesh:

* kube-proxy (``build/kubernetes/bin/kube-proxy``, nftables mode) runs as a lab process in
  each node's network namespace and ``host`` cgroup, next to the node's kubelet, with its
  own client certificate (user ``system:kube-proxy``, which the API server's default
  ``system:node-proxier`` binding authorizes) and configuration file in the node's state
  directory. Its tables live in the node's namespace only, so they go with it at
  ``lab down``; the pods' default route is their node's bridge, so their traffic to a
  ClusterIP is NATed there. Conntrack sizing is left alone: those settings are the
  machine's, not a namespace's.
* CoreDNS (``build/coredns/bin/coredns``, :file:`k8s/coredns`) runs as a Deployment in
  ``kube-system`` that the lab kubelets run as any pod (the checkout's binary stands in
  for the image), readiness-probed on ``/ready``, behind ``kube-dns`` at the tenth address
  of the service range as kubeadm places it. The lab has no upstream resolver: names
  outside the cluster get NXDOMAIN from CoreDNS itself, never a query to the machine's.

The objects are pure data (:func:`coredns_objects`); :func:`deploy_dns` sends them.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from smesh.lab import agents, kubepaths, state
from smesh.lab.controlplane import DEFAULT_BIN_DIR, SERVICE_CIDR
from smesh.lab.errors import LabError
from smesh.lab.topology import DNS_IP4, POD_CIDR4, POD_CIDR6, Node, Topology

#: The cluster's DNS domain (the kubelet's ``--cluster-domain``).
CLUSTER_DOMAIN = "cluster.local"
#: The ``kube-dns`` Service's ClusterIP: the tenth address of the default service range, as
#: kubeadm; a larger ``--service-cidr`` keeps it (the kubelets write it into every pod).
DNS_IP = str(DNS_IP4)
#: The ``kubernetes`` Service's ClusterIP in the default range (the API server allocates the
#: first address: Topology.api_service_ip in any range).
API_SERVICE_IP = str(ipaddress.ip_network(SERVICE_CIDR)[1])
KUBE_PROXY = DEFAULT_BIN_DIR / "kube-proxy"
#: Where ``make coredns`` puts CoreDNS, relative to the repository root.
COREDNS = DEFAULT_BIN_DIR.parents[1] / "coredns" / "bin" / "coredns"
#: The user the API server's bootstrap policy binds to ``system:node-proxier``.
KUBE_PROXY_USER = "system:kube-proxy"
#: One replica keeps the lab light (kubeadm runs two): DNS is not what the lab tests fail over.
DNS_REPLICAS = 1
#: The CoreDNS release k8s/coredns/go.mod pins (the pods' ``image`` says which one runs).
COREDNS_VERSION = "v1.15.0"
DNS_LABELS = {"k8s-app": "kube-dns"}
READY_PORT = 8181  # CoreDNS's ready plugin
HEALTH_PORT = 8080  # its health plugin
METRICS_PORT = 9153


class MissingDnsBinary(LabError):
    """``make coredns`` has not built CoreDNS yet."""


def kube_proxy_kubeconfig(lab: str, node: str) -> Path:
    return kubepaths.node_dir(lab, node) / "kube-proxy.kubeconfig"


def kube_proxy_config_path(lab: str, node: str) -> Path:
    return kubepaths.node_dir(lab, node) / "kube-proxy.yaml"


def kube_proxy_log(lab: str, node: str) -> Path:
    return kubepaths.node_dir(lab, node) / "kube-proxy.log"


def kube_proxy_config(lab: str, node: Node) -> dict[str, Any]:
    """kube-proxy's KubeProxyConfiguration for *node* (written as JSON, which is YAML).

    ``conntrack`` zeros mean "leave as is": kube-proxy would otherwise raise the machine's
    ``nf_conntrack_max`` and hash size, which no namespace owns. The metrics and health
    servers listen on the node namespace's loopback only."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": {"kubeconfig": str(kube_proxy_kubeconfig(lab, node.name))},
        "hostnameOverride": node.name,
        "clusterCIDR": f"{POD_CIDR4},{POD_CIDR6}",
        "bindAddress": str(node.ip4),
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    }


def spawn_kube_proxy(topo: Topology, node: Node, cgroup_root: Path) -> state.Process:
    """Start *node*'s kube-proxy in its network namespace and ``host`` cgroup."""
    if not KUBE_PROXY.is_file():
        raise LabError(f"kube-proxy is not built in {KUBE_PROXY.parent}: run `make kubernetes`")
    config = kube_proxy_config_path(topo.name, node.name)
    config.write_text(json.dumps(kube_proxy_config(topo.name, node), indent=2))
    argv = [str(KUBE_PROXY), f"--config={config}", "--v=1"]
    log = kube_proxy_log(topo.name, node.name)
    return agents.spawn(argv, cgroup_root / node.host_cgroup, node.netns, log)


def corefile() -> str:
    """The cluster zones from the API; every other name NXDOMAIN, answered here (the lab
    has no upstream, and a query to the machine's resolvers would leave the lab)."""
    return f"""\
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        ttl 30
    }}
    prometheus :{METRICS_PORT}
    cache 30
    reload
    loadbalance
}}
.:53 {{
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def coredns_objects(binary: Path = COREDNS) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) for everything cluster DNS needs, in creation order."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    system = "/api/v1/namespaces/kube-system"
    meta = {"name": "coredns", "namespace": "kube-system", "labels": dict(DNS_LABELS)}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns"},
        "rules": [
            {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["list", "watch"]},
            {
                "apiGroups": [""],
                "resources": ["services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:coredns"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "system:coredns",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}],
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "coredns", "namespace": "kube-system"},
        "data": {"Corefile": corefile()},
    }
    probe_ready = {
        "httpGet": {"path": "/ready", "port": READY_PORT, "scheme": "HTTP"},
        "periodSeconds": 2,
        "failureThreshold": 3,
    }
    container = {
        "name": "coredns",
        "image": f"registry.k8s.io/coredns/coredns:{COREDNS_VERSION}",
        "command": [str(binary)],
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": probe_ready,
        "resources": {"limits": {"memory": "170Mi"}, "requests": {"cpu": "100m", "memory": "70Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True}],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": DNS_REPLICAS,
            "selector": {"matchLabels": dict(DNS_LABELS)},
            "template": {
                "metadata": {"labels": dict(DNS_LABELS)},
                "spec": {
                    "serviceAccountName": "coredns",
                    "priorityClassName": "system-cluster-critical",
                    # CoreDNS itself resolves nothing through the cluster (as kubeadm's).
                    "dnsPolicy": "Default",
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "config-volume",
                            "configMap": {
                                "name": "coredns",
                                "items": [{"key": "Corefile", "path": "Corefile"}],
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kube-dns",
            "namespace": "kube-system",
            "labels": {**DNS_LABELS, "kubernetes.io/name": "CoreDNS"},
        },
        "spec": {
            "clusterIP": DNS_IP,
            "selector": dict(DNS_LABELS),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": METRICS_PORT, "protocol": "TCP"},
            ],
        },
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "coredns", "namespace": "kube-system"},
    }
    return [
        (f"{rbac}/clusterroles", role),
        (f"{rbac}/clusterrolebindings", binding),
        (f"{system}/serviceaccounts", account),
        (f"{system}/configmaps", config),
        (f"{system}/services", service),
        ("/apis/apps/v1/namespaces/kube-system/deployments", deployment),
    ]


def check_dns_binary(binary: Path = COREDNS) -> None:
    if not binary.is_file():
        raise MissingDnsBinary(f"CoreDNS is not built at {binary}: run `make coredns`")


def deploy_dns(lab: str, binary: Path = COREDNS) -> None:
    """Create CoreDNS's objects (an existing one is kept: ``lab up`` makes them once)."""
    from smesh.lab import cluster  # noqa: PLC0415 - cluster imports this module's constants

    check_dns_binary(binary)
    for path, obj in coredns_objects(binary):
        cluster.create(lab, path, obj)
