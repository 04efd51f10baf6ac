"""A Kubernetes lab's Services and DNS without the mesh: kube-proxy (nftables) on each node,
CoreDNS behind ``kube-dns``, and the resolv.conf a kubelet writes.

One lab with process agents (``--install processes``) for the module; the ``shop`` namespace is
not opted in, so what is tested is the cluster's own machinery, as in any real cluster: a
client pod reaches a two-replica Deployment through its ClusterIP and its DNS names (plain
TCP, NATed by kube-proxy in the node's namespace), and outside names fail at once. The
last test brings the lab down.

The lab has a service range larger than the default (``--service-cidr``, as the benchmark's
lab): ClusterIPs come from it, the DNS Service keeps its fixed address in it, and the API
server's Service takes its first address. Every other Kubernetes lab test has the default.
"""

from __future__ import annotations

import collections.abc
import ipaddress
import json
import os
import socket
import subprocess
import time

import pytest

from smesh.lab import services, state
from smesh.linux import netns
from tests.integration.kubernetes.clusterkit import kubectl, kubernetes_lab, running, wait_for
from tests.integration.labkit import Lab, smesh

WEB_SERVER = """
import http.server, os
class Name(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        reply = os.environ["HOSTNAME"].encode()
        self.send_response(200)
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Name).serve_forever()
"""

SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector: {matchLabels: {app: web}}
      containers:
      - name: http
        image: none
        command: ["python3", "-c", @SERVER@]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8080, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop}
spec:
  nodeName: node-1
  containers:
  - {name: main, image: none, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: custom, namespace: shop}
spec:
  dnsPolicy: None
  dnsConfig:
    nameservers: [198.18.255.10]
    searches: [example.internal]
    options: [{name: ndots, value: "2"}, {name: edns0}]
  containers:
  - {name: main, image: none, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: shop}
spec:
  hostNetwork: true
  nodeName: node-2
  containers:
  - {name: main, image: none, command: ["sleep", "infinity"]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostdns, namespace: shop}
spec:
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  nodeName: node-1
  containers:
  - {name: main, image: none, command: ["sleep", "infinity"]}
""".replace("@SERVER@", json.dumps(WEB_SERVER))

REQUESTS = 50  # as the acceptance; kube-proxy picks at random: a miss is 2**-49
SERVICE_CIDR = "198.18.240.0/20"


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    with kubernetes_lab("svc", "--install", "processes", "--service-cidr", SERVICE_CIDR) as lab:
        kubectl(lab, "apply", "-f", "-", stdin=SHOP)
        running(lab, "-n", "shop", count=6)
        running(lab, "-n", "kube-system", "-l", "k8s-app=kube-dns", count=1)
        # Running is not serving: CoreDNS answers once its readiness probe passes, and the
        # client reaches it once kube-proxy routes the kube-dns address to that endpoint.
        ready_endpoints(lab, "kube-dns", "kube-system", 1)

        def answered() -> bool:
            found = in_client(lab, "getent", "hosts", "kube-dns.kube-system.svc.cluster.local")
            return found.returncode == 0

        wait_for("the client to get answers from kube-dns", answered)
        yield lab


def in_client(lab: Lab, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return lab.exec("shop/client", argv, timeout=timeout)


def cluster_ip(lab: Lab) -> str:
    return kubectl(lab, "get", "service", "web", "-n", "shop", "-o", "jsonpath={.spec.clusterIP}")


def ready_endpoints(lab: Lab, service: str, namespace: str, count: int) -> None:
    def check() -> bool:
        out = kubectl(
            lab,
            "get",
            "endpointslices",
            "-n",
            namespace,
            "-l",
            f"kubernetes.io/service-name={service}",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}",
        )
        return len(out.split()) == count

    wait_for(f"{count} ready endpoints of {namespace}/{service}", check)


def test_kube_proxy_runs_in_each_node_namespace_only(cluster: Lab) -> None:
    lab = state.load(cluster.name)
    assert lab is not None
    assert sorted(lab.proxies) == ["node-1", "node-2"]
    for node, process in lab.proxies.items():
        assert process.alive()
        # its network namespace is the node's, and its tables are there
        assert (
            os.stat(f"/proc/{process.pid}/ns/net").st_ino
            == os.stat(f"/run/netns/{cluster.name}.{node}").st_ino
        )
        tables = subprocess.run(
            ["ip", "netns", "exec", f"{cluster.name}.{node}", "nft", "list", "tables"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "table ip kube-proxy" in tables
        assert "table ip6 kube-proxy" in tables
    # ... and never in the machine's own ruleset
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "kube-proxy" not in host.stdout
    dns = kubectl(cluster, "get", "service", "kube-dns", "-n", "kube-system", "-o", "json")
    assert f'"clusterIP": "{services.DNS_IP}"' in dns
    assert ipaddress.ip_address(services.DNS_IP) in ipaddress.ip_network(SERVICE_CIDR)
    assert lab.settings["service_cidr"] == SERVICE_CIDR  # what later commands plan with


def test_pods_get_the_resolv_conf_a_kubelet_writes(cluster: Lab) -> None:
    assert in_client(cluster, "cat", "/etc/resolv.conf").stdout == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        f"nameserver {services.DNS_IP}\n"
        "options ndots:5\n"
    )
    custom = cluster.exec("shop/custom", ["cat", "/etc/resolv.conf"]).stdout
    assert custom == ("search example.internal\nnameserver 198.18.255.10\noptions ndots:2 edns0\n")
    # a hostNetwork pod keeps its node's (the machine's) file; the machine's is untouched
    with open("/etc/resolv.conf") as machine:
        node_file = machine.read()
    assert cluster.exec("shop/hostnet", ["cat", "/etc/resolv.conf"]).stdout == node_file
    assert services.DNS_IP not in node_file


def test_clusterip_and_service_name_reach_both_replicas(cluster: Lab) -> None:
    ready_endpoints(cluster, "web", "shop", 2)
    replicas = set(running(cluster, "-n", "shop", "-l", "app=web", count=2))
    address = cluster_ip(cluster)
    assert ipaddress.ip_address(address) in ipaddress.ip_network(SERVICE_CIDR)
    for target in ("http://web.shop.svc.cluster.local:8080/", f"http://{address}:8080/"):
        loop = (
            f"for i in $(seq {REQUESTS}); do curl -sS --max-time 10 {target} || exit 1; echo; done"
        )
        reply = in_client(cluster, "sh", "-c", loop, timeout=120)
        assert reply.returncode == 0, reply.stderr
        answers = reply.stdout.split()
        assert len(answers) == REQUESTS
        assert set(answers) == replicas, target


def test_short_name_resolves_through_the_search_domains(cluster: Lab) -> None:
    address = cluster_ip(cluster)
    getent = in_client(cluster, "getent", "hosts", "web")
    assert getent.returncode == 0, getent.stderr
    assert getent.stdout.split() == [address, "web.shop.svc.cluster.local"]
    script = (
        "import socket; print(socket.getaddrinfo('web', 8080, type=socket.SOCK_STREAM)[0][4][0])"
    )
    assert in_client(cluster, "python3", "-c", script).stdout.strip() == address
    # a host-network pod with ClusterFirstWithHostNet: the cluster's DNS and kube-proxy's
    # output NAT from the node's own namespace
    hostdns = cluster.exec("shop/hostdns", ["curl", "-sS", "--max-time", "10", "http://web:8080/"])
    assert hostdns.returncode == 0, hostdns.stderr
    assert hostdns.stdout.startswith("web-")
    # the API server's Service, from another namespace's search path
    kube = in_client(cluster, "getent", "hosts", "kubernetes.default")
    assert kube.stdout.split()[0] == str(ipaddress.ip_network(SERVICE_CIDR)[1])
    # ... reached through kube-proxy's NAT, its certificate naming that address
    ca = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    url = f"https://{ipaddress.ip_network(SERVICE_CIDR)[1]}/version"
    api = in_client(cluster, "curl", "-sS", "--max-time", "10", "--cacert", ca, "-o", "/dev/null",
                    "-w", "%{http_code}", url)  # fmt: skip
    assert api.returncode == 0, api.stderr
    assert api.stdout in {"200", "401", "403"}


def test_an_outside_name_fails_at_once(cluster: Lab) -> None:
    """NXDOMAIN from CoreDNS itself (EAI_NONAME), not a timeout (EAI_AGAIN) of a query sent
    upstream: the lab has no upstream and CoreDNS forwards nowhere."""
    script = (
        "import socket, time\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    socket.getaddrinfo('smesh-lab-test.example.com', 80)\n"
        "    print('resolved')\n"
        "except socket.gaierror as exc:\n"
        "    print(exc.errno, round(time.monotonic() - start, 1))\n"
    )
    started = time.monotonic()
    reply = in_client(cluster, "python3", "-c", script, timeout=30)
    errno, _seconds = reply.stdout.split()
    assert int(errno) == socket.EAI_NONAME, reply.stdout
    assert time.monotonic() - started < 25  # a resolver timeout would take 5 s per try


def test_lab_down_stops_kube_proxy_and_its_tables(cluster: Lab) -> None:
    lab = state.load(cluster.name)
    assert lab is not None
    proxies = list(lab.proxies.values())
    smesh("lab", "down", "--name", cluster.name)
    assert not [p for p in proxies if p.alive()]
    assert not [ns for ns in netns.list_names() if ns.startswith(f"{cluster.name}.")]
    host = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    assert "kube-proxy" not in host.stdout
