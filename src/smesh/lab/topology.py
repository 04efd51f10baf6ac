"""The plan of a lab: names, addresses and cgroup paths, derived from three numbers.

Addressing (IPv4 and IPv6, dual stack):

* node k owns the pod CIDRs 198.18.k.0/24 and fd00:198:18:k::/64; its bridge ``br0`` is
  the pods' gateway at .1 / ::1 and pod j of the node gets .(j+1) / ::(j+1);
* nodes meet on the fabric network 198.19.0.0/24 and fd00:198:19::/64 as .k / ::k, which
  is outside the pod CIDRs on purpose, so "a node address" is a real non-mesh destination;
* a Kubernetes lab's Services take their ClusterIPs from the service range, by default
  198.18.255.0/24 (above every node's /24); ``--service-cidr`` makes it larger, downwards
  from there, and the cluster DNS Service keeps its fixed address 198.18.255.10 in it.

Everything is a pure function of (name, nodes, pods per node), so the same plan can be
rebuilt from the saved state by ``status`` and ``down``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from smesh.lab.errors import InvalidLabSpec, UnknownMember

DEFAULT_NAME = "smesh"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
MAX_NODES = 254
MAX_PODS_PER_NODE = 250

POD_CIDR4 = ipaddress.IPv4Network("198.18.0.0/16")
POD_CIDR6 = ipaddress.IPv6Network("fd00:198:18::/48")
FABRIC4 = ipaddress.IPv4Network("198.19.0.0/24")
FABRIC6 = ipaddress.IPv6Network("fd00:198:19::/64")
#: The Kubernetes control plane's place on the fabric (``--kubernetes``): above every node.
CONTROL_IP4 = FABRIC4.network_address + 250
CONTROL_IP6 = FABRIC6.network_address + 0xFA

#: The service range of a Kubernetes lab unless ``--service-cidr`` says otherwise.
DEFAULT_SERVICE_CIDR = ipaddress.IPv4Network("198.18.255.0/24")
#: The cluster DNS Service's ClusterIP, the same in every service range (kubelets write it).
DNS_IP4 = ipaddress.IPv4Address("198.18.255.10")
#: The smallest service range --service-cidr takes (kube-apiserver wants some room).
MAX_SERVICE_PREFIX = 28

IDENTITY_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidLabSpec(
            f"invalid lab name {name!r}: use 1-16 characters, lowercase letters, digits and "
            "'-', starting with a letter"
        )
    return name


@dataclass(frozen=True)
class Node:
    name: str
    index: int
    netns: str
    ip4: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    pod_cidr4: ipaddress.IPv4Network
    pod_cidr6: ipaddress.IPv6Network
    cgroup: str  # relative to the cgroup v2 root

    @property
    def gateway4(self) -> ipaddress.IPv4Address:
        return self.pod_cidr4.network_address + 1

    @property
    def bridge_mac(self) -> str:
        """The MAC address ``br0`` keeps: a locally administered one, unique per node.

        A bridge whose address was never set takes the lowest of its ports' addresses and
        changes it as pods' veths come and go. The pods' neighbour entries for the gateway
        then name an address that is no longer the bridge's, and the node drops their
        packets (to another host's address) until each entry is probed again, up to about
        30 s later: a pod scaled up could cut its node's pods off from other nodes.
        """
        return f"02:53:4d:{(self.index >> 8) & 0xFF:02x}:{self.index & 0xFF:02x}:01"

    @property
    def gateway6(self) -> ipaddress.IPv6Address:
        return self.pod_cidr6.network_address + 1

    @property
    def host_cgroup(self) -> str:
        """Where the node's own daemons run (``lab exec node-k``): outside every pod."""
        return f"{self.cgroup}/host"

    @property
    def agent_cgroup(self) -> str:
        return f"{self.cgroup}/agent"


@dataclass(frozen=True)
class Pod:
    name: str
    index: int  # 1-based, cluster wide
    node: str
    slot: int  # 1-based, on its node
    netns: str
    ip4: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    cgroup: str  # relative to the cgroup v2 root
    namespace: str
    service_account: str

    @property
    def host_veth(self) -> str:
        """The node-side end of the pod's veth pair (interface names are per namespace)."""
        return f"veth-{self.name}"


@dataclass(frozen=True)
class Topology:
    name: str
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    mesh: bool = True
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    #: A Kubernetes cluster: pods come from the API server, none from the plan.
    kubernetes: bool = False
    #: Where the Services' ClusterIPs come from (``--kubernetes``).
    service_cidr: ipaddress.IPv4Network = DEFAULT_SERVICE_CIDR

    @property
    def api_service_ip(self) -> ipaddress.IPv4Address:
        """The ``kubernetes`` Service's ClusterIP: the API server takes the range's first."""
        return self.service_cidr.network_address + 1

    @property
    def fabric_netns(self) -> str:
        return f"{self.name}.fabric"

    @property
    def control_netns(self) -> str:
        """The Kubernetes control plane's namespace (only with ``kubernetes``)."""
        return f"{self.name}.control"

    @property
    def cgroup(self) -> str:
        return f"smesh-lab-{self.name}"

    @property
    def netns_names(self) -> list[str]:
        names = [self.fabric_netns, *(n.netns for n in self.nodes), *(p.netns for p in self.pods)]
        return [*names, self.control_netns] if self.kubernetes else names

    def pod(self, name: str) -> Pod:
        for pod in self.pods:
            if pod.name == name:
                return pod
        raise UnknownMember(
            f"lab {self.name!r} has no pod {name!r} (pods: {', '.join(p.name for p in self.pods)})"
        )

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise UnknownMember(
            f"lab {self.name!r} has no node {name!r} "
            f"(nodes: {', '.join(n.name for n in self.nodes)})"
        )

    def member(self, name: str) -> Pod | Node:
        """A pod or a node by name (for ``lab exec``)."""
        if name.startswith("node-"):
            return self.node(name)
        try:
            return self.pod(name)
        except UnknownMember:
            raise UnknownMember(
                f"lab {self.name!r} has no pod or node {name!r} "
                f"(pods: {', '.join(p.name for p in self.pods)}; "
                f"nodes: {', '.join(n.name for n in self.nodes)})"
            ) from None

    def pods_on(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node == node]


def parse_identity(text: str) -> tuple[str, str, str]:
    """``pod-3=payments/api`` → (pod, namespace, service account)."""
    pod, sep, rest = text.partition("=")
    namespace, slash, account = rest.partition("/")
    if not sep or not slash or not pod:
        raise InvalidLabSpec(f"invalid --identity {text!r}: expected POD=NAMESPACE/SERVICEACCOUNT")
    for label, value in (("namespace", namespace), ("service account", account)):
        if not IDENTITY_PATTERN.match(value):
            raise InvalidLabSpec(
                f"invalid --identity {text!r}: {label} {value!r} must be a DNS label "
                "(lowercase letters, digits, '-')"
            )
    return pod, namespace, account


def service_cidr(text: str | None, nodes: int) -> ipaddress.IPv4Network:
    """``--service-cidr`` checked against a lab of *nodes* nodes (None: the default).

    The range must hold the cluster DNS Service's fixed address, stay inside 198.18.0.0/16
    (kube-proxy's cluster CIDR and the nodes' routes treat that block as the cluster's) and
    keep clear of every node's pod /24 (a ClusterIP there would shadow pods).
    """
    if text is None:
        return DEFAULT_SERVICE_CIDR
    try:
        network = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise InvalidLabSpec(
            f"--service-cidr {text!r}: not an IPv4 network ({exc}); e.g. 198.18.240.0/20"
        ) from None
    if not network.subnet_of(POD_CIDR4) or network.prefixlen > MAX_SERVICE_PREFIX:
        raise InvalidLabSpec(
            f"--service-cidr {text}: must lie inside {POD_CIDR4} and be a /16 to "
            f"/{MAX_SERVICE_PREFIX}, e.g. 198.18.240.0/20"
        )
    if DNS_IP4 not in network:
        raise InvalidLabSpec(
            f"--service-cidr {text}: must contain {DNS_IP4}, the cluster DNS Service's fixed "
            "address (a range ending at 198.18.255.255, e.g. 198.18.240.0/20)"
        )
    last_node = ipaddress.IPv4Network(f"198.18.{nodes}.0/24")
    if network.network_address <= last_node.broadcast_address:
        raise InvalidLabSpec(
            f"--service-cidr {text}: overlaps the pod ranges of the lab's {nodes} nodes "
            f"(198.18.1.0/24 to {last_node}); start it above {last_node.broadcast_address}"
        )
    return network


def plan(
    name: str = DEFAULT_NAME,
    nodes: int = 2,
    pods_per_node: int = 2,
    mesh: bool = True,
    identities: dict[str, tuple[str, str]] | None = None,
    *,
    kubernetes: bool = False,
    service_range: str | None = None,
) -> Topology:
    """The lab *name* with *nodes* nodes and *pods_per_node* pods on each, filled node by node.

    A Kubernetes lab plans no pods (*pods_per_node* is ignored): the API server has them.
    *service_range* is ``--service-cidr`` (:func:`service_cidr`; only with *kubernetes*).
    """
    validate_name(name)
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidLabSpec(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if service_range is not None and not kubernetes:
        raise InvalidLabSpec("--service-cidr is the range of a --kubernetes lab's Services")
    services = service_cidr(service_range, nodes)
    if kubernetes:
        pods_per_node = 0
    elif not 1 <= pods_per_node <= MAX_PODS_PER_NODE:
        raise InvalidLabSpec(
            f"--pods-per-node must be between 1 and {MAX_PODS_PER_NODE}, not {pods_per_node}"
        )
    identities = dict(identities or {})
    node_list: list[Node] = []
    pod_list: list[Pod] = []
    for k in range(1, nodes + 1):
        cidr4 = ipaddress.IPv4Network(f"198.18.{k}.0/24")
        cidr6 = ipaddress.IPv6Network(f"fd00:198:18:{k:x}::/64")
        node = Node(
            name=f"node-{k}",
            index=k,
            netns=f"{name}.node-{k}",
            ip4=FABRIC4.network_address + k,
            ip6=FABRIC6.network_address + k,
            pod_cidr4=cidr4,
            pod_cidr6=cidr6,
            cgroup=f"smesh-lab-{name}/node-{k}",
        )
        node_list.append(node)
        for slot in range(1, pods_per_node + 1):
            index = len(pod_list) + 1
            pod_name = f"pod-{index}"
            namespace, account = identities.pop(pod_name, ("default", pod_name))
            pod_list.append(
                Pod(
                    name=pod_name,
                    index=index,
                    node=node.name,
                    slot=slot,
                    netns=f"{name}.{pod_name}",
                    ip4=cidr4.network_address + slot + 1,
                    ip6=cidr6.network_address + slot + 1,
                    cgroup=f"{node.cgroup}/{pod_name}",
                    namespace=namespace,
                    service_account=account,
                )
            )
    if identities:
        raise UnknownMember(
            f"--identity names pods the lab does not have: {', '.join(sorted(identities))}"
        )
    return Topology(
        name=name,
        nodes=tuple(node_list),
        pods=tuple(pod_list),
        mesh=mesh,
        kubernetes=kubernetes,
        service_cidr=services,
    )
