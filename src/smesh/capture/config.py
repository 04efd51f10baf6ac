"""What capture redirects, and where to: validated once, then rendered for either backend.

The same :class:`CaptureConfig` fills the eBPF config maps and writes the nftables
ruleset, so both modes capture exactly the same connects. A bad value is reported as one
line naming the field (``capture config: mesh_cidrs[1]: ...``).
"""

from __future__ import annotations

import ctypes
import ipaddress
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from smesh.capture import abi
from smesh.capture.errors import CaptureConfigError
from smesh.validation import describe

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Port = Annotated[int, Field(ge=1, le=65535)]

DEFAULT_MESH_CIDRS: tuple[Network, ...] = (
    ipaddress.IPv4Network("198.18.0.0/16"),
    ipaddress.IPv6Network("fd00:198:18::/48"),
)
# IPv6 link-local: a pod reaches every pod on its node's bridge at their fe80:: addresses
# (with a scope id), which no mesh CIDR names. Left uncaptured, those connects were a way
# around `nonMeshed: deny`; so capture always covers them, whatever the mesh CIDRs.
LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")
LISTENER_PORT = 18000
TUNNEL_PORT = 18001


def _network(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.ip_network(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8 ({exc})") from None
    return value


def _v4(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 address") from None
    return value


def _v6(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ipaddress.IPv6Address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 address") from None
    return value


class CaptureConfig(BaseModel):
    """Capture settings for one node (every pod of the node shares them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mesh_cidrs: Annotated[
        tuple[Annotated[Network, BeforeValidator(_network)], ...],
        Field(min_length=1, max_length=abi.MAX_CIDRS - 1),  # one entry is LINK_LOCAL6's
    ] = DEFAULT_MESH_CIDRS
    excluded_ports: Annotated[tuple[Port, ...], Field(max_length=abi.MAX_PORTS - 3)] = ()
    listener_ipv4: Annotated[ipaddress.IPv4Address, BeforeValidator(_v4)] = ipaddress.IPv4Address(
        "127.0.0.1"
    )
    listener_ipv6: Annotated[ipaddress.IPv6Address, BeforeValidator(_v6)] = ipaddress.IPv6Address(
        "::1"
    )
    listener_port: Port = LISTENER_PORT
    tunnel_port: Port = TUNNEL_PORT
    events_passthrough: bool = True
    refuse_inbound_plaintext: bool = False  # apps accept only what the agent delivers
    # Listening ports that still take plaintext from outside the pod (health probes).
    plaintext_ports: Annotated[tuple[Port, ...], Field(max_length=abi.MAX_PORTS)] = ()
    max_tracked_connections: Annotated[int, Field(ge=16, le=1 << 22)] = abi.MAX_TRACKED

    @model_validator(mode="after")
    def _loopback_listener(self) -> CaptureConfig:
        # The listener lives in every pod's own namespace: only loopback names it there.
        for field in ("listener_ipv4", "listener_ipv6"):
            if not getattr(self, field).is_loopback:
                raise ValueError(f"{field}: must be a loopback address (127.0.0.0/8 or ::1)")
        return self

    @classmethod
    def build(cls, **values: Any) -> CaptureConfig:
        """Validate *values*; raise :class:`CaptureConfigError` naming the first bad field."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise CaptureConfigError(f"capture config: {describe(exc)}") from None

    @property
    def never_captured_ports(self) -> tuple[int, ...]:
        """The listener and tunnel ports (so the mesh never loops) plus the excluded list."""
        return tuple(sorted({self.listener_port, self.tunnel_port, *self.excluded_ports}))

    @property
    def captured_cidrs(self) -> tuple[Network, ...]:
        """What capture sends to the listener: the mesh CIDRs and IPv6 link-local."""
        return tuple(dict.fromkeys((*self.mesh_cidrs, LINK_LOCAL6)))

    @property
    def mesh_cidrs4(self) -> tuple[ipaddress.IPv4Network, ...]:
        """The IPv4 part of :attr:`captured_cidrs`, without overlaps (nft intervals refuse them)."""
        nets = [n for n in self.captured_cidrs if isinstance(n, ipaddress.IPv4Network)]
        return tuple(ipaddress.collapse_addresses(nets))

    @property
    def mesh_cidrs6(self) -> tuple[ipaddress.IPv6Network, ...]:
        """The IPv6 part of :attr:`captured_cidrs` (link-local included), without overlaps."""
        nets = [n for n in self.captured_cidrs if isinstance(n, ipaddress.IPv6Network)]
        return tuple(ipaddress.collapse_addresses(nets))


def addr16(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The BPF side's 16-byte form: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed
    return ip.packed


def from_addr16(raw: bytes, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if family == abi.AF_INET:
        return ipaddress.IPv4Address(raw[12:16])
    return ipaddress.IPv6Address(raw[:16])


def cidr_key(network: Network) -> abi.CidrKey:
    key = abi.CidrKey()
    if isinstance(network, ipaddress.IPv4Network):
        key.prefixlen = 96 + network.prefixlen
    else:
        key.prefixlen = network.prefixlen
    key.addr = abi.Addr16(*addr16(network.network_address))
    return key


def config_struct(config: CaptureConfig) -> abi.Config:
    raw = abi.Config()
    raw.listener6 = abi.Addr16(*config.listener_ipv6.packed)
    raw.listener4 = (ctypes.c_uint8 * 4)(*config.listener_ipv4.packed)
    raw.port4 = config.listener_port
    raw.port6 = config.listener_port
    raw.flags = abi.F_CONFIGURED
    if config.events_passthrough:
        raw.flags |= abi.F_EVENTS_PASSTHROUGH
    if config.refuse_inbound_plaintext:
        raw.flags |= abi.F_REFUSE_PLAINTEXT
    return raw
