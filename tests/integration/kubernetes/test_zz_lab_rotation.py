"""A CA rotation in a chart-installed lab while long connections run (issue 20's acceptance).

One 2-node lab, smesh installed from the Helm chart with ``identity.rotationSpread`` of 3 s (so
agents renew the old root's certificates within seconds of the activation, not within the
default minute). A client pod on node-1 holds several long connections, through the mesh, to
a server pod on node-2: three it writes a line to and reads the echo from after each step,
and one download the server streams forever. Then ``smesh ca rotate --kubeconfig``, step by
step, as a cluster admin runs it:

1. stage: the new root joins the trust bundle; both agents log a bundle of 2 roots;
2. activate: the new root signs; the bundle ConfigMap names it (``signing.pem``) and every
   agent renews its old-root certificates early;
3. ``--retire-old`` is refused: old leaves may be valid for up to 24 h more.

After each step every long connection still moves bytes end to end. New connections work
between a new-root and an old-root holder in both directions (a leaf signed with the staged
key, presented to an agent still serving its old-root certificate; after the renewal, the
client's old-root certificate, kept before the activation, presented to the server's agent
that now serves a new-root one), and between the new certificates. What the agents serve at
the end chains to the new root.

Runs after test_zz_lab_install for the reason given there (a chart lab disturbs a later
process-agent lab; under investigation).
"""

from __future__ import annotations

import base64
import collections.abc
import datetime as dt
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from smesh.identity import certs
from smesh.jsonlines import whole_records
from smesh.lab import kubepaths
from tests.integration.kubernetes.clusterkit import (
    ECHO_SERVER,
    TRUST,
    agent_pod,
    container,
    container_log,
    deployed,
    in_control,
    kubectl,
    kubernetes_lab,
    listing,
    mesh_namespace,
    running,
    wait_for,
)
from tests.integration.labkit import SMESH, Lab

#: The server pod's long-connection ports: a line echo, and a stream of 1 KiB every 50 ms.
ECHO_PORT, STREAM_PORT, HTTP_PORT = 9000, 9001, 8080
LONG_SERVER = f"""
import socket, threading, time
def echo(conn):
    with conn:
        for line in conn.makefile("rb"):
            conn.sendall(line)
def stream(conn):
    with conn:
        while True:
            conn.sendall(b"x" * 1024)
            time.sleep(0.05)
def serve(port, handler):
    server = socket.create_server(("0.0.0.0", port))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()
threading.Thread(target=serve, args=({STREAM_PORT}, stream), daemon=True).start()
serve({ECHO_PORT}, echo)
"""
#: The client's long connections (python3 -c LONG_CLIENT HOST): for each word on stdin it
#: writes the word on every echo connection and prints the echoes, then the bytes streamed
#: so far; a connection that ends or resets ends the client with the reason on stderr.
LONG_CLIENT = f"""
import socket, sys, threading
host = sys.argv[1]
echoes = [socket.create_connection((host, {ECHO_PORT}), timeout=30) for _ in range(3)]
stream = socket.create_connection((host, {STREAM_PORT}), timeout=30)
got = [0]
def drain():
    while True:
        data = stream.recv(65536)
        if not data:
            got[0] = -1
            return
        got[0] += len(data)
threading.Thread(target=drain, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    word = line.strip().encode()
    replies = []
    for conn in echoes:
        conn.sendall(word + b"\\n")
        buf = b""
        while not buf.endswith(b"\\n"):
            chunk = conn.recv(4096)
            if not chunk:
                sys.exit("an echo connection was closed by the other side")
            buf += chunk
        replies.append(buf.decode().strip())
    print(" ".join(replies), got[0], flush=True)
"""
CLIENT = f"{TRUST}/ns/front/sa/client"
WEB = f"{TRUST}/ns/shop/sa/web"


class LongConnections:
    """The client pod's long connections, driven one word at a time."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.streamed = 0
        self._rounds = 0

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        found: list[str] = []
        reader = threading.Thread(target=lambda: found.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        if not found or not found[0]:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise AssertionError(f"the long connections' client ended or hung: {err[-2000:]}")
        return found[0].strip()

    def ready(self) -> None:
        assert self._line(60) == "ready"

    def still_flowing(self, step: str) -> None:
        """Every echo connection answers, and the stream delivered more bytes than before."""
        assert self.proc.stdin is not None
        word = f"{step}-{self._rounds}"
        self._rounds += 1
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        *echoes, streamed = self._line(30).split()
        assert echoes == [word] * 3, (step, echoes)
        assert int(streamed) > self.streamed, f"{step}: the stream stopped ({streamed} bytes)"
        self.streamed = int(streamed)


@pytest.fixture(scope="module")
def cluster() -> collections.abc.Iterator[Lab]:
    spread = "agent.config.identity.rotationSpread=3s"
    with kubernetes_lab("kr", "--nodes", "2", "--install", "chart", "--set", spread) as lab:
        items = [
            mesh_namespace("shop"),
            *deployed(
                "shop",
                "web",
                [
                    container(["python3", "-c", LONG_SERVER], name="long"),
                    container(["python3", "-c", ECHO_SERVER], name="http"),
                ],
                node="node-2",
            ),
            mesh_namespace("front"),
            *deployed("front", "client", [container(["sleep", "infinity"])], node="node-1"),
        ]
        kubectl(lab, "apply", "-f", "-", stdin=listing(items))
        yield lab


def only(found: dict[str, dict[str, Any]]) -> dict[str, Any]:
    assert len(found) == 1, found
    return next(iter(found.values()))


def rotate(lab: Lab, *flags: str) -> subprocess.CompletedProcess[str]:
    admin = str(kubepaths.admin_kubeconfig(lab.name))
    return in_control(lab, *SMESH, "ca", "rotate", "--kubeconfig", admin, *flags)


def ca_secret(lab: Lab) -> dict[str, bytes]:
    secret = json.loads(
        kubectl(lab, "get", "secret", "-n", "smesh-system", "smesh-ca", "-o", "json")
    )
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def bundle_roots(lab: Lab, node: str) -> list[int]:
    """The root counts *node*'s agent logged on each trust bundle change, in order."""
    path = container_log(lab, agent_pod(lab, node), "agent")
    return [
        int(r["msg"].split(": ")[1].split()[0])
        for r in whole_records(path)
        if "trust bundle updated" in r.get("msg", "")
    ]


def cached(lab: Lab, node: str, identity: str) -> Path:
    """*identity*'s credential (key and chain) in *node*'s agent's credential cache."""
    namespace, account = identity.split("/ns/")[1].split("/sa/")
    found = list(
        kubepaths.node_root(lab.name, node).glob(f"var/lib/smesh/**/{namespace}%2F{account}.pem")
    )
    assert len(found) == 1, found
    return found[0]


def leaf(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pem)[0]


def write_credential(
    path: Path, root: x509.Certificate, root_key: ec.EllipticCurvePrivateKey
) -> Path:
    """The client's identity signed by *root*: what an agent holding that root's leaf shows."""
    key = certs.new_key()
    cert = certs.leaf_certificate(key.public_key(), CLIENT, root, root_key, dt.timedelta(hours=1))
    path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def through_tunnel(lab: Lab, client: str, web_ip: str, credential: Path, trusted: Path) -> str:
    """From the client pod, with *credential*: TLS to the web pod's tunnel port (its agent),
    the server's chain verified against *trusted* only, then CONNECT to its HTTP app."""
    request = (
        f"CONNECT {web_ip}:{HTTP_PORT} HTTP/1.1\\r\\nHost: {web_ip}\\r\\n\\r\\n"
        "GET /rotated HTTP/1.0\\r\\n\\r\\n"
    )
    script = (
        f"openssl s_client -quiet -verify_return_error -connect {web_ip}:18001 "
        f"-cert {credential} -key {credential} -CAfile {trusted} "
        f"< <(printf '{request}'; sleep 3) 2>&1"
    )
    proc = lab.exec(client, ["bash", "-c", script], timeout=30)
    return proc.stdout


def test_a_rotation_drops_no_connection_and_moves_every_certificate_to_the_new_root(
    cluster: Lab, tmp_path: Path
) -> None:
    web = only(running(cluster, "-n", "shop", "-l", "app=web", count=1))
    client_pod = only(running(cluster, "-n", "front", "-l", "app=client", count=1))
    assert (web["spec"]["nodeName"], client_pod["spec"]["nodeName"]) == ("node-2", "node-1")
    web_ip = web["status"]["podIP"]
    client = f"front/{client_pod['metadata']['name']}"
    cluster.wait_tcp(client, web_ip, ECHO_PORT, timeout=60)
    cluster.wait_tcp(client, web_ip, HTTP_PORT, timeout=60)

    def new_connection() -> None:
        proc = cluster.exec(
            client, ["curl", "-sS", "--max-time", "20", f"http://{web_ip}:8080/new"]
        )
        assert (proc.returncode, proc.stdout) == (0, "echo /new"), proc.stderr

    proc = cluster.spawn(
        client,
        ["python3", "-c", LONG_CLIENT, web_ip],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    long = LongConnections(proc)  # type: ignore[arg-type]
    long.ready()
    new_connection()
    long.still_flowing("before")
    # they go through the mesh: tunnelled by node-1's agent, to the web identity
    open_now = json.loads(
        cluster.exec("node-1", ["curl", "-sS", "http://127.0.0.1:15000/debug/connections"]).stdout
    )["connections"]
    tunnelled = [
        c["destination"]
        for c in open_now
        if (c["route"], c["result"], c["peer_identity"]) == ("tunnel", "open", WEB)
    ]
    assert tunnelled.count(f"{web_ip}:{ECHO_PORT}") == 3, open_now
    assert f"{web_ip}:{STREAM_PORT}" in tunnelled, open_now

    secret = ca_secret(cluster)
    old_root = x509.load_pem_x509_certificate(secret["tls.crt"])
    old_root_file = tmp_path / "old-root.pem"
    old_root_file.write_bytes(secret["tls.crt"])
    old_client = tmp_path / "old-client.pem"
    old_client.write_bytes(cached(cluster, "node-1", CLIENT).read_bytes())
    leaf(old_client.read_bytes()).verify_directly_issued_by(old_root)

    # 1. stage: the agents trust both roots, nothing signs with the new one yet
    before = {node: len(bundle_roots(cluster, node)) for node in ("node-1", "node-2")}
    staged = rotate(cluster)
    assert staged.returncode == 0, staged.stderr
    for node in ("node-1", "node-2"):
        wait_for(
            f"{node}'s agent to trust both roots",
            lambda node=node: bundle_roots(cluster, node)[before[node] :] == [2],  # type: ignore[misc]
            timeout=60,
        )
    new_connection()
    long.still_flowing("staged")
    secret = ca_secret(cluster)
    new_root = x509.load_pem_x509_certificate(secret["next.crt"])
    new_root_file = tmp_path / "new-root.pem"
    new_root_file.write_bytes(secret["next.crt"])
    new_key = serialization.load_pem_private_key(secret["next.key"], password=None)
    assert isinstance(new_key, ec.EllipticCurvePrivateKey)
    # a new-root holder talks to an agent still serving its old-root certificate
    minted = write_credential(tmp_path / "new-client.pem", new_root, new_key)
    reply = through_tunnel(cluster, client, web_ip, minted, old_root_file)
    assert "HTTP/1.1 200" in reply, reply
    assert "echo /rotated" in reply, reply

    # 2. activate: the new root signs; the agents renew early (rotationSpread 3 s)
    activated = rotate(cluster, "--activate")
    assert activated.returncode == 0, activated.stderr
    new_connection()
    long.still_flowing("activated")

    def new_client_certificate() -> bool:
        try:
            leaf(cached(cluster, "node-1", CLIENT).read_bytes()).verify_directly_issued_by(new_root)
        except (ValueError, AssertionError):
            return False
        return True

    wait_for("node-1's agent to renew the client's certificate", new_client_certificate, timeout=90)

    # the web agent serves a new-root certificate: verified against the new root alone, and
    # it takes the client's old-root certificate (valid for hours yet) as well
    def web_renewed() -> str:
        reply = through_tunnel(cluster, client, web_ip, old_client, new_root_file)
        return reply if "echo /rotated" in reply else ""

    reply = wait_for("node-2's agent to serve a new-root certificate", web_renewed, timeout=90)
    assert "HTTP/1.1 200" in reply
    assert "verify error" not in reply
    new_connection()  # both ends on new-root certificates
    long.still_flowing("renewed")

    # every certificate issued since the activation chains to the new root, to both nodes'
    # agents; each agent counted its early renewals
    csrs = json.loads(kubectl(cluster, "get", "csr", "-o", "json"))["items"]
    issued = [
        leaf(base64.b64decode(c["status"]["certificate"]))
        for c in csrs
        if c["status"].get("certificate")
    ]
    fresh = [c for c in issued if c.issuer == new_root.subject]
    assert all(c.issuer in {old_root.subject, new_root.subject} for c in issued)
    for cert in fresh:
        cert.verify_directly_issued_by(new_root)
    uris = {certs.uri_of(c) for c in fresh}
    assert {CLIENT, WEB} <= uris, uris
    for node in ("node-1", "node-2"):
        metrics = cluster.exec(node, ["curl", "-sS", "http://127.0.0.1:15020/metrics"]).stdout
        line = next(
            x
            for x in metrics.splitlines()
            if x.startswith("smesh_certificate_rotation_renewals_total ")
        )
        assert float(line.split()[1]) >= 1, line

    # 3. the old root cannot be retired while its leaves may be valid
    refused = rotate(cluster, "--retire-old")
    assert refused.returncode != 0
    assert "may be valid until" in refused.stderr
    new_connection()
    long.still_flowing("end")
    proc.stdin.close()  # type: ignore[union-attr]
    assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
