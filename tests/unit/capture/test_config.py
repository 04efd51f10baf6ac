"""CaptureConfig: defaults a lab needs no flag for, and errors that name the field."""

from __future__ import annotations

import ipaddress

import pytest

from smesh.capture import CaptureConfig, CaptureConfigError, abi
from smesh.capture.config import addr16, cidr_key, config_struct, from_addr16


def test_defaults_capture_the_lab_cidrs_and_never_the_mesh_ports() -> None:
    config = CaptureConfig()
    assert [str(n) for n in config.mesh_cidrs] == ["198.18.0.0/16", "fd00:198:18::/48"]
    assert config.never_captured_ports == (18000, 18001)
    assert (str(config.listener_ipv4), str(config.listener_ipv6)) == ("127.0.0.1", "::1")


def test_excluded_ports_join_the_listener_and_tunnel_ports() -> None:
    config = CaptureConfig.build(excluded_ports=[8080, 18000, 15021], tunnel_port=19001)
    assert config.never_captured_ports == (8080, 15021, 18000, 19001)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"mesh_cidrs": ["10.0.0.0/8", "nonsense"]}, "mesh_cidrs[1]: 'nonsense' is not a CIDR"),
        ({"mesh_cidrs": ["10.0.0.1/8"]}, "mesh_cidrs[0]: '10.0.0.1/8' is not a CIDR"),
        ({"mesh_cidrs": []}, "mesh_cidrs: "),
        ({"excluded_ports": [80, 70000]}, "excluded_ports[1]: "),
        ({"listener_port": 0}, "listener_port: "),
        ({"listener_ipv4": "10.0.0.1"}, "listener_ipv4: must be a loopback address"),
        ({"listener_ipv6": "fd00::1"}, "listener_ipv6: must be a loopback address"),
        ({"listener_ipv6": "127.0.0.1"}, "listener_ipv6: '127.0.0.1' is not an IPv6 address"),
        ({"max_tracked_connections": 1}, "max_tracked_connections: "),
        ({"mesh_cidr": ["10.0.0.0/8"]}, "mesh_cidr: unknown field"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_field(values: dict[str, object], message: str) -> None:
    with pytest.raises(CaptureConfigError) as err:
        CaptureConfig.build(**values)
    text = str(err.value)
    assert text.startswith("capture config: ")
    assert message in text
    assert "\n" not in text
    assert err.value.exit_code == 2


def test_addresses_are_sixteen_bytes_with_ipv4_mapped() -> None:
    v4 = ipaddress.IPv4Address("198.18.2.2")
    v6 = ipaddress.IPv6Address("fd00:198:18:2::2")
    assert addr16(v4) == ipaddress.IPv6Address("::ffff:198.18.2.2").packed
    assert addr16(v6) == v6.packed
    assert from_addr16(addr16(v4), abi.AF_INET) == v4
    assert from_addr16(addr16(v6), abi.AF_INET6) == v6


def test_ipv4_cidrs_become_prefixes_of_the_mapped_range() -> None:
    key = cidr_key(ipaddress.IPv4Network("198.18.0.0/16"))
    assert key.prefixlen == 96 + 16
    assert bytes(key.addr) == ipaddress.IPv6Address("::ffff:198.18.0.0").packed
    key6 = cidr_key(ipaddress.IPv6Network("fd00:198:18::/48"))
    assert key6.prefixlen == 48


def test_the_config_struct_says_where_captured_connects_go() -> None:
    raw = config_struct(CaptureConfig.build(listener_port=15001, events_passthrough=False))
    assert bytes(raw.listener4) == bytes([127, 0, 0, 1])
    assert bytes(raw.listener6) == ipaddress.IPv6Address("::1").packed
    assert (raw.port4, raw.port6) == (15001, 15001)
    assert raw.flags == abi.F_CONFIGURED


def test_refusing_inbound_plaintext_is_a_flag_for_the_programs() -> None:
    raw = config_struct(CaptureConfig.build(refuse_inbound_plaintext=True))
    assert raw.flags & abi.F_REFUSE_PLAINTEXT
    assert not config_struct(CaptureConfig.build()).flags & abi.F_REFUSE_PLAINTEXT


def test_plaintext_ports_are_checked_like_any_port() -> None:
    assert CaptureConfig.build(plaintext_ports=[8080]).plaintext_ports == (8080,)
    with pytest.raises(CaptureConfigError, match=r"plaintext_ports\[0\]"):
        CaptureConfig.build(plaintext_ports=[0])


def test_ipv6_link_local_is_always_captured_without_overlapping_the_mesh_cidrs() -> None:
    config = CaptureConfig.build(mesh_cidrs=["10.0.0.0/8", "fe80::/64", "10.1.0.0/16"])
    assert ipaddress.ip_network("fe80::/10") in config.captured_cidrs
    assert [str(n) for n in config.mesh_cidrs6] == ["fe80::/10"]  # nft intervals: no overlap
    assert [str(n) for n in config.mesh_cidrs4] == ["10.0.0.0/8"]
    many = [f"10.{i}.0.0/16" for i in range(abi.MAX_CIDRS)]
    with pytest.raises(CaptureConfigError, match="mesh_cidrs"):
        CaptureConfig.build(mesh_cidrs=many)  # one LPM entry is link-local's
