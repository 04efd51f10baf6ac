"""The one place that knows the BPF side's names and layouts.

Object, program and map names, the enums, and ctypes twins of the C structs in
``bpf/smesh.h``. ``tests/unit/capture/test_abi.py`` compares every twin with the BTF of
the compiled objects, so a change on one side that is not made on the other fails a test
instead of corrupting a map.
"""

from __future__ import annotations

import ctypes
import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from _ctypes import _CData

K = TypeVar("K", bound="_CData")
V = TypeVar("V", bound="_CData")

MAX_PODS = 4096
MAX_CIDRS = 256
MAX_PORTS = 256
MAX_TRACKED = 65536
POD_KEY_LEN = 128
POD_NAME_LEN = 128

F_CONFIGURED = 1
F_EVENTS_PASSTHROUGH = 2
F_REFUSE_PLAINTEXT = 4
POD_HAS_IP4 = 1
POD_HAS_IP6 = 2

AF_INET = 2
AF_INET6 = 10


class Decision(enum.IntEnum):
    CAPTURED = 1
    PASS_NOT_MESH = 2
    PASS_PORT = 3
    PASS_LOOPBACK = 4
    PASS_SELF = 5
    DENIED = 6
    MAP_FULL = 7

    @property
    def label(self) -> str:
        """The word trace and status print: ``captured``, ``pass-port``, ``map-full``..."""
        return self.name.lower().replace("_", "-")


class Counter(enum.IntEnum):
    CAPTURED = 0
    PASS_NOT_MESH = 1
    PASS_PORT = 2
    PASS_LOOPBACK = 3
    PASS_SELF = 4
    PASS_NOT_TCP = 5
    DENIED = 6
    MAP_FULL = 7
    TRACKED = 8
    HANDED_OVER = 9
    EVENTS_DROPPED = 10
    PLAINTEXT_REFUSED = 11


COUNTER_COUNT = len(Counter)

Addr16 = ctypes.c_uint8 * 16


class Config(ctypes.Structure):
    _fields_ = (
        ("listener6", Addr16),
        ("listener4", ctypes.c_uint8 * 4),
        ("port4", ctypes.c_uint16),
        ("port6", ctypes.c_uint16),
        ("flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    )


class CidrKey(ctypes.Structure):
    _fields_ = (("prefixlen", ctypes.c_uint32), ("addr", Addr16))


class Pod(ctypes.Structure):
    _fields_ = (
        ("ip4", Addr16),
        ("ip6", Addr16),
        ("id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class PodMeta(ctypes.Structure):
    _fields_ = (
        ("netns_cookie", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("key", ctypes.c_char * POD_KEY_LEN),
        ("name", ctypes.c_char * POD_NAME_LEN),
    )


class Orig(ctypes.Structure):
    _fields_ = (
        ("addr", Addr16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8),
        ("pod_id", ctypes.c_uint32),
    )


class ConnKey(ctypes.Structure):
    _fields_ = (
        ("netns_cookie", ctypes.c_uint64),
        ("addr", Addr16),
        ("port", ctypes.c_uint16),
        ("_pad0", ctypes.c_uint16),
        ("_pad1", ctypes.c_uint32),
    )


class Counters(ctypes.Structure):
    _fields_ = (("values", ctypes.c_uint64 * COUNTER_COUNT),)


class Event(ctypes.Structure):
    _fields_ = (
        ("ts_ns", ctypes.c_uint64),
        ("socket_cookie", ctypes.c_uint64),
        ("addr", Addr16),
        ("pod_id", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("decision", ctypes.c_uint8),
        ("_pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
    )


# Struct name in C → Python twin; the BTF test walks this table.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    "smesh_config": Config,
    "smesh_cidr_key": CidrKey,
    "smesh_pod": Pod,
    "smesh_pod_meta": PodMeta,
    "smesh_orig": Orig,
    "smesh_conn_key": ConnKey,
    "smesh_counters": Counters,
    "smesh_event": Event,
}


class MapName(enum.StrEnum):
    CONFIG = "smesh_config"
    CIDRS = "smesh_cidrs"
    PORTS = "smesh_ports"
    PLAIN_PORTS = "smesh_plain_ports"
    PODS = "smesh_pods"
    POD_META = "smesh_pod_meta"
    SK_ORIG = "smesh_sk_orig"
    CONNS = "smesh_conns"
    COUNTERS = "smesh_counters"
    EVENTS = "smesh_events"


@dataclass(frozen=True)
class MapSpec(Generic[K, V]):
    """A map's name with the Python types of its keys and values."""

    name: MapName
    key: type[K]
    value: type[V]


CONFIG_MAP = MapSpec(MapName.CONFIG, ctypes.c_uint32, Config)
CIDRS_MAP = MapSpec(MapName.CIDRS, CidrKey, ctypes.c_uint8)
PORTS_MAP = MapSpec(MapName.PORTS, ctypes.c_uint16, ctypes.c_uint8)
PLAIN_PORTS_MAP = MapSpec(MapName.PLAIN_PORTS, ctypes.c_uint16, ctypes.c_uint8)
PODS_MAP = MapSpec(MapName.PODS, ctypes.c_uint64, Pod)
POD_META_MAP = MapSpec(MapName.POD_META, ctypes.c_uint32, PodMeta)
SK_ORIG_MAP = MapSpec(MapName.SK_ORIG, ctypes.c_int, Orig)
CONNS_MAP = MapSpec(MapName.CONNS, ConnKey, Orig)
COUNTERS_MAP = MapSpec(MapName.COUNTERS, ctypes.c_uint32, Counters)  # per CPU
# Every keyed map; smesh_events (a ring buffer) has neither keys nor values.
MAP_SPECS: tuple[MapSpec[Any, Any], ...] = (
    CONFIG_MAP,
    CIDRS_MAP,
    PORTS_MAP,
    PLAIN_PORTS_MAP,
    PODS_MAP,
    POD_META_MAP,
    SK_ORIG_MAP,
    CONNS_MAP,
    COUNTERS_MAP,
)


@dataclass(frozen=True)
class ProgramSpec:
    name: str  # function name in C (the kernel keeps its first 15 characters)
    obj: str  # object file stem under the objects directory


SOCKOPS_POD = ProgramSpec("smesh_ops_pod", "sockops")
GETPEERNAME4 = ProgramSpec("smesh_peername4", "peername")
GETPEERNAME6 = ProgramSpec("smesh_peername6", "peername")
CONNECT4 = ProgramSpec("smesh_connect4", "connect")
CONNECT6 = ProgramSpec("smesh_connect6", "connect")
SOCKOPS_PROXY = ProgramSpec("smesh_ops_proxy", "sockops")
GETSOCKOPT = ProgramSpec("smesh_sockopt", "sockopt")

# Attach order on a pod's cgroup: whatever reads the socket storage goes in before the
# connect hooks that fill it, so no captured socket ever misses its bookkeeping. Detach
# runs in reverse.
INBOUND = ProgramSpec("smesh_inbound", "inbound")
POD_PROGRAMS = (SOCKOPS_POD, GETPEERNAME4, GETPEERNAME6, CONNECT4, CONNECT6, INBOUND)
PROXY_PROGRAMS = (SOCKOPS_PROXY, GETSOCKOPT)
OBJECTS = ("connect", "peername", "sockops", "sockopt", "inbound")

_REPO_BUILD = Path(__file__).resolve().parents[3] / "build" / "bpf"


def objects_dir() -> Path:
    """Where the compiled objects are: ``$SMESH_BPF_DIR``, else the source tree's build/bpf."""
    return Path(os.environ.get("SMESH_BPF_DIR", _REPO_BUILD))


def object_path(stem: str, directory: Path | None = None) -> Path:
    return (directory or objects_dir()) / f"{stem}.bpf.o"
