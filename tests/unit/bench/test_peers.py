"""The C tunnels are configured for the same job as smesh: TLS 1.3, client cert required."""

from __future__ import annotations

from pathlib import Path

from smesh.bench import peers
from smesh.bench.material import NodeFiles

HOPS = peers.hops([("echo", 7000)], "198.18.1.1", "198.19.0.2", "198.18.2.2")
FILES = NodeFiles(Path("/t/n.crt"), Path("/t/n.key"), Path("/t/n.pem"))
CA = Path("/t/ca.pem")


def test_hops_put_each_proxy_on_its_own_port() -> None:
    (hop,) = HOPS
    assert hop.client_listen == ("198.18.1.1", 27000)
    assert hop.tunnel == ("198.19.0.2", 37000)
    assert hop.target == ("198.18.2.2", 7000)


def test_stunnel_server_requires_a_client_certificate_over_tls13() -> None:
    server = peers.stunnel_config("server", HOPS, FILES, CA)
    assert "accept = 198.19.0.2:37000" in server
    assert "connect = 198.18.2.2:7000" in server
    assert "requireCert = yes" in server
    assert "verifyChain = yes" in server
    assert "sslVersionMin = TLSv1.3" in server
    client = peers.stunnel_config("client", HOPS, FILES, CA)
    assert "client = yes" in client
    assert "requireCert" not in client
    assert "cert = /t/n.crt" in client


def test_haproxy_tls_is_on_the_tunnel_side_only() -> None:
    client = peers.haproxy_config("client", HOPS, FILES, CA)
    assert "bind 198.18.1.1:27000\n" in client
    assert (
        "server s 198.19.0.2:37000 ssl crt /t/n.pem ca-file /t/ca.pem verify required "
        "ssl-min-ver TLSv1.3" in client
    )
    server = peers.haproxy_config("server", HOPS, FILES, CA)
    assert "bind 198.19.0.2:37000 ssl crt /t/n.pem ca-file /t/ca.pem verify required" in server
    assert "server s 198.18.2.2:7000\n" in server


def test_model_argv_names_role_addresses_and_loop() -> None:
    model = next(m for m in peers.MODELS if m.name == "memorybio-uvloop")
    argv = model.argv("py", "client", HOPS[0], FILES, CA)
    assert argv[:4] == ["py", "-m", "smesh.bench.candidates", "memorybio"]
    assert argv[argv.index("--listen") + 1] == "198.18.1.1:27000"
    assert argv[argv.index("--target") + 1] == "198.19.0.2:37000"
    assert argv[argv.index("--loop") + 1] == "uvloop"
