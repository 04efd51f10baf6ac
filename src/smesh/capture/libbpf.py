"""A thin, typed ctypes binding to libbpf.so.1 (Debian's libbpf1): nothing else at run time.

Only what capture needs: open → configure → load → close an object, attach programs to
cgroups through BPF links, pin and unpin, typed map access, ring buffers. libbpf 1.x
reports failures as a negative errno (or NULL with errno set); :func:`_fail` turns them
into typed exceptions, and libbpf's own messages — including the verifier's log — are
captured through ``libbpf_set_print`` and attached to the exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as errnos
import logging
import os
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from smesh.capture import abi
from smesh.capture.errors import (
    BpfError,
    BpfObjectMissing,
    BpfPermissionDenied,
    BtfMissing,
    CgroupNotV2,
    NotSupported,
    PinnedStateMismatch,
    VerifierRejected,
)
from smesh.closing import Closing

if TYPE_CHECKING:
    from _ctypes import _CData

log = logging.getLogger(__name__)

K = TypeVar("K", bound="_CData")
V = TypeVar("V", bound="_CData")

_P = ctypes.c_void_p
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2
_VA_LIST_BYTES = {"x86_64": 24, "aarch64": 32}.get(platform.machine())

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


class _Lib:
    """libbpf and libc symbols with their C signatures, resolved once."""

    def __init__(self) -> None:
        try:
            bpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise BpfError(
                f"cannot load libbpf.so.1 ({exc}); install it (Debian: apt install libbpf1)"
            ) from None
        self.bpf = bpf
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        sig: dict[str, tuple[object, list[object]]] = {
            "libbpf_set_print": (_P, [_PRINT_FN]),
            "libbpf_strerror": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]),
            "libbpf_num_possible_cpus": (ctypes.c_int, []),
            "libbpf_probe_bpf_prog_type": (ctypes.c_int, [ctypes.c_int, _P]),
            "libbpf_probe_bpf_map_type": (ctypes.c_int, [ctypes.c_int, _P]),
            "libbpf_probe_bpf_helper": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, _P]),
            "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
            "bpf_object__load": (ctypes.c_int, [_P]),
            "bpf_object__close": (None, [_P]),
            "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
            "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
            "bpf_map__fd": (ctypes.c_int, [_P]),
            "bpf_map__set_pin_path": (ctypes.c_int, [_P, ctypes.c_char_p]),
            "bpf_map__reuse_fd": (ctypes.c_int, [_P, ctypes.c_int]),
            "bpf_map__set_max_entries": (ctypes.c_int, [_P, ctypes.c_uint32]),
            "bpf_map__max_entries": (ctypes.c_uint32, [_P]),
            "bpf_program__fd": (ctypes.c_int, [_P]),
            "bpf_program__attach_cgroup": (_P, [_P, ctypes.c_int]),
            "bpf_link__open": (_P, [ctypes.c_char_p]),
            "bpf_link__fd": (ctypes.c_int, [_P]),
            "bpf_link__pin": (ctypes.c_int, [_P, ctypes.c_char_p]),
            "bpf_link__unpin": (ctypes.c_int, [_P]),
            "bpf_link__update_program": (ctypes.c_int, [_P, _P]),
            "bpf_link__detach": (ctypes.c_int, [_P]),
            "bpf_link__destroy": (ctypes.c_int, [_P]),
            "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
            "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
            "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, _P]),
            "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, _P, _P]),
            "bpf_obj_get": (ctypes.c_int, [ctypes.c_char_p]),
            "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, _P, _P]),
            "bpf_prog_get_next_id": (ctypes.c_int, [ctypes.c_uint32, _P]),
            "bpf_prog_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
            "bpf_link_get_next_id": (ctypes.c_int, [ctypes.c_uint32, _P]),
            "bpf_map_get_next_id": (ctypes.c_int, [ctypes.c_uint32, _P]),
            "bpf_map_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
            "bpf_link_get_fd_by_id": (ctypes.c_int, [ctypes.c_uint32]),
            "ring_buffer__new": (_P, [ctypes.c_int, _SAMPLE_FN, _P, _P]),
            "ring_buffer__add": (ctypes.c_int, [_P, ctypes.c_int, _SAMPLE_FN, _P]),
            "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
            "ring_buffer__consume": (ctypes.c_int, [_P]),
            "ring_buffer__epoll_fd": (ctypes.c_int, [_P]),
            "ring_buffer__free": (None, [_P]),
        }
        for name, (restype, argtypes) in sig.items():
            fn = getattr(bpf, name)
            fn.restype = restype
            fn.argtypes = argtypes
        self.libc.vsnprintf.restype = ctypes.c_int
        self.libc.vsnprintf.argtypes = [_P, ctypes.c_size_t, ctypes.c_char_p, _P]


_lib_instance: _Lib | None = None
_lib_lock = threading.Lock()


def _lib() -> _Lib:
    global _lib_instance  # noqa: PLW0603 - one process-wide handle, like the library itself
    with _lib_lock:
        if _lib_instance is None:
            _lib_instance = _Lib()
            _install_printer(_lib_instance)
        return _lib_instance


# --- libbpf's messages -------------------------------------------------------------------

_messages = threading.local()


def _format(lib: _Lib, fmt: bytes, args: int) -> str:
    """vsnprintf over libbpf's va_list, sized exactly where the ABI lets us copy a va_list."""
    if _VA_LIST_BYTES:
        copy = ctypes.create_string_buffer(_VA_LIST_BYTES)
        ctypes.memmove(copy, args, _VA_LIST_BYTES)
        size = lib.libc.vsnprintf(None, 0, fmt, ctypes.addressof(copy)) + 1
    else:
        size = 65536
    buf = ctypes.create_string_buffer(max(size, 1))
    lib.libc.vsnprintf(buf, len(buf), fmt, args)
    return buf.value.decode(errors="replace")


def _install_printer(lib: _Lib) -> None:
    def printer(level: int, fmt: bytes | None, args: int | None) -> int:
        if level == _LIBBPF_DEBUG or fmt is None or args is None:
            return 0
        text = _format(lib, fmt, args)
        sink: list[str] | None = getattr(_messages, "sink", None)
        if sink is not None:
            sink.append(text)
        log.debug("libbpf: %s", text.rstrip())
        return 0

    global _printer  # noqa: PLW0603 - the C side keeps only a pointer: keep the object alive
    _printer = _PRINT_FN(printer)
    lib.bpf.libbpf_set_print(_printer)


_printer: object = None


@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Collect what libbpf says on this thread while the block runs."""
    previous = getattr(_messages, "sink", None)
    sink: list[str] = []
    _messages.sink = sink
    try:
        yield sink
    finally:
        _messages.sink = previous


def _strerror(err: int) -> str:
    buf = ctypes.create_string_buffer(256)
    _lib().bpf.libbpf_strerror(-abs(err), buf, len(buf))
    return buf.value.decode(errors="replace") or os.strerror(abs(err))


def _verifier_log(messages: list[str]) -> str:
    text = "".join(messages)
    start = text.find("-- BEGIN PROG LOAD LOG --")
    end = text.find("-- END PROG LOAD LOG --")
    if start < 0:
        return ""
    return text[start + len("-- BEGIN PROG LOAD LOG --") : end if end > start else None].strip()


def _fail(what: str, err: int, messages: list[str] | None = None) -> BpfError:
    """The typed exception for libbpf failure *err* (a positive or negative errno)."""
    err = abs(err)
    messages = messages or []
    said = " ".join(m.strip() for m in messages if m.strip())
    verifier = _verifier_log(messages)
    reason = _strerror(err)
    if verifier:
        last = [line for line in verifier.splitlines() if line.strip()][-3:]
        return VerifierRejected(
            f"{what}: the kernel's verifier rejected a program: {' / '.join(last)}",
            err,
            verifier,
        )
    if "couldn't reuse pinned map" in said or ("reuse" in said and "pinned" in said):
        return PinnedStateMismatch(
            f"{what}: maps pinned by an earlier smesh do not match this one "
            "(other settings or version); detach capture first (`smesh capture detach`)",
            err,
            said,
        )
    if "BTF" in said and ("is required" in said or "failed" in said or "missing" in said):
        return BtfMissing(
            f"{what}: missing or broken BTF ({said[-200:]}); build the objects with "
            "`clang -g` (`make bpf` does)",
            err,
            said,
        )
    if err in (errnos.EPERM, errnos.EACCES):
        return BpfPermissionDenied(
            f"{what}: permission denied ({reason}); run as root "
            "(CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
            err,
            said,
        )
    if err in (errnos.EOPNOTSUPP, errnos.ENOTSUP, 524):  # 524: the kernel's ENOTSUPP
        return NotSupported(
            f"{what}: not supported by this kernel ({reason}); eBPF capture needs about "
            "Linux 5.15 with CONFIG_CGROUP_BPF, or use nftables capture (capture.mode: "
            "nftables for the agent, --mode nftables for `smesh capture attach`)",
            err,
            said,
        )
    detail = f": {said[-300:]}" if said else ""
    return BpfError(f"{what}: {reason}{detail}", err, said)


def _check(ret: int, what: str, messages: list[str] | None = None) -> int:
    if ret < 0:
        raise _fail(what, ret, messages)
    return ret


def _checked_ptr(ptr: int | None, what: str, messages: list[str] | None = None) -> int:
    if not ptr:
        raise _fail(what, ctypes.get_errno() or errnos.EINVAL, messages)
    return ptr


def probe_prog_type(prog_type: int) -> bool:
    """Whether this kernel loads programs of *prog_type* (libbpf loads a trivial one)."""
    with _captured() as said:
        ret = _lib().bpf.libbpf_probe_bpf_prog_type(prog_type, None)
    return bool(_check(ret, f"probing BPF program type {prog_type}", said))


def probe_map_type(map_type: int) -> bool:
    """Whether this kernel creates maps of *map_type* (libbpf creates a small one)."""
    with _captured() as said:
        ret = _lib().bpf.libbpf_probe_bpf_map_type(map_type, None)
    return bool(_check(ret, f"probing BPF map type {map_type}", said))


def probe_helper(prog_type: int, helper: int) -> bool:
    """Whether programs of *prog_type* may call BPF helper number *helper* on this kernel."""
    with _captured() as said:
        ret = _lib().bpf.libbpf_probe_bpf_helper(prog_type, helper, None)
    return bool(_check(ret, f"probing BPF helper {helper} for program type {prog_type}", said))


def num_possible_cpus() -> int:
    return _check(_lib().bpf.libbpf_num_possible_cpus(), "counting possible CPUs")


# --- objects, programs, links ------------------------------------------------------------


class Program:
    """A program inside a loaded object (owned by it: valid until the object closes)."""

    def __init__(self, obj: BpfObject, ptr: int, name: str) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name = name

    @property
    def fd(self) -> int:
        return _check(_lib().bpf.bpf_program__fd(self._ptr), f"program {self.name}: fd")

    def attach_cgroup(self, cgroup_fd: int, cgroup: Path) -> Link:
        """Attach through a BPF link (multi-attach: other programs on the cgroup stay)."""
        with _captured() as said:
            ptr = _lib().bpf.bpf_program__attach_cgroup(self._ptr, cgroup_fd)
        if not ptr:
            err = ctypes.get_errno() or errnos.EINVAL
            if err in (errnos.EBADF, errnos.ENOTDIR):
                raise CgroupNotV2(f"cannot attach {self.name} to {cgroup}: not a cgroup v2 dir")
            raise _fail(f"attaching {self.name} to cgroup {cgroup}", err, said)
        return Link(ptr, f"{self.name}@{cgroup}")


class ObjectMap:
    """A map as the object declares it: configurable before load, usable after."""

    def __init__(self, obj: BpfObject, ptr: int, name: str) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name = name

    def set_pin_path(self, path: Path) -> None:
        """Reuse the map pinned at *path* if there is one, else create it and pin it there."""
        _check(
            _lib().bpf.bpf_map__set_pin_path(self._ptr, str(path).encode()),
            f"map {self.name}: pin path {path}",
        )

    def reuse_fd(self, fd: int) -> None:
        _check(_lib().bpf.bpf_map__reuse_fd(self._ptr, fd), f"map {self.name}: reuse fd")

    def set_max_entries(self, n: int) -> None:
        _check(_lib().bpf.bpf_map__set_max_entries(self._ptr, n), f"map {self.name}: max entries")

    @property
    def max_entries(self) -> int:
        return int(_lib().bpf.bpf_map__max_entries(self._ptr))

    @property
    def fd(self) -> int:
        return _check(_lib().bpf.bpf_map__fd(self._ptr), f"map {self.name}: fd (not loaded?)")


class BpfObject(Closing):
    """One compiled ELF object. Lifecycle: open → configure maps → :meth:`load` → close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            raise BpfObjectMissing(
                f"BPF object {path} not found; build it with `make bpf` "
                "(or point SMESH_BPF_DIR at the directory holding the .bpf.o files)"
            )
        with _captured() as said:
            ptr = _lib().bpf.bpf_object__open_file(str(path).encode(), None)
        self._ptr: int | None = _checked_ptr(ptr, f"opening BPF object {path}", said)
        self.loaded = False

    def _handle(self) -> int:
        if self._ptr is None:
            raise BpfError(f"BPF object {self.path} is closed")
        return self._ptr

    def map(self, name: str) -> ObjectMap:
        ptr = _lib().bpf.bpf_object__find_map_by_name(self._handle(), name.encode())
        if not ptr:
            raise BpfError(f"BPF object {self.path.name} has no map {name}")
        return ObjectMap(self, ptr, name)

    def program(self, name: str) -> Program:
        ptr = _lib().bpf.bpf_object__find_program_by_name(self._handle(), name.encode())
        if not ptr:
            raise BpfError(f"BPF object {self.path.name} has no program {name}")
        return Program(self, ptr, name)

    def load(self) -> None:
        """Create (or reuse) the maps and load every program into the kernel."""
        with _captured() as said:
            ret = _lib().bpf.bpf_object__load(self._handle())
        _check(ret, f"loading {self.path.name}", said)
        self.loaded = True

    def close(self) -> None:
        """Release the object's fds; pinned maps and links outlive it."""
        if self._ptr is not None:
            _lib().bpf.bpf_object__close(self._ptr)
            self._ptr = None


class _LinkInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("prog_id", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("cgroup_id", ctypes.c_uint64),
        ("attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 52),
    )


class _MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("_rest", ctypes.c_uint8 * 64),
    )


class _ProgInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("_lens", ctypes.c_uint32 * 2),
        ("_insns", ctypes.c_uint64 * 2),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("_rest", ctypes.c_uint8 * 160),
    )


@dataclass(frozen=True)
class LinkInfo:
    id: int
    prog_id: int
    cgroup_id: int
    attach_type: int


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str


def _info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(
        _lib().bpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
        f"reading info of {what}",
    )


class Link(Closing):
    """A BPF link: the attachment itself. Pinned, it outlives every process."""

    def __init__(self, ptr: int, what: str) -> None:
        self._ptr: int | None = ptr
        self.what = what

    @classmethod
    def open_pinned(cls, path: Path) -> Link:
        with _captured() as said:
            ptr = _lib().bpf.bpf_link__open(str(path).encode())
        return cls(_checked_ptr(ptr, f"opening pinned link {path}", said), str(path))

    def _handle(self) -> int:
        if self._ptr is None:
            raise BpfError(f"link {self.what} is closed")
        return self._ptr

    @property
    def fd(self) -> int:
        return _check(_lib().bpf.bpf_link__fd(self._handle()), f"link {self.what}: fd")

    def info(self) -> LinkInfo:
        raw = _LinkInfo()
        _info(self.fd, raw, f"link {self.what}")
        return LinkInfo(raw.id, raw.prog_id, raw.cgroup_id, raw.attach_type)

    def pin(self, path: Path) -> None:
        _check(
            _lib().bpf.bpf_link__pin(self._handle(), str(path).encode()),
            f"pinning link {self.what} at {path}",
        )

    def unpin(self) -> None:
        _check(_lib().bpf.bpf_link__unpin(self._handle()), f"unpinning link {self.what}")

    def update_program(self, program: Program) -> None:
        """Swap the program in place: the attachment never has a gap."""
        _check(
            _lib().bpf.bpf_link__update_program(self._handle(), program._ptr),
            f"replacing the program of link {self.what}",
        )

    def detach(self) -> None:
        """Detach now, whoever else holds or pins this link (BPF_LINK_DETACH)."""
        ret = _lib().bpf.bpf_link__detach(self._handle())
        if ret < 0 and abs(ret) != errnos.ENOLINK:
            _check(ret, f"detaching link {self.what}")

    def close(self) -> None:
        """Drop this process's handle; a pinned link stays attached."""
        if self._ptr is not None:
            _lib().bpf.bpf_link__destroy(self._ptr)
            self._ptr = None


# --- maps --------------------------------------------------------------------------------


def obj_get(path: Path) -> int:
    """An fd for the object pinned at *path*."""
    fd = _lib().bpf.bpf_obj_get(str(path).encode())
    if fd < 0:
        raise _fail(f"opening pinned object {path}", fd)
    return int(fd)


def map_info(fd: int) -> MapInfo:
    raw = _MapInfo()
    _info(fd, raw, "map")
    return MapInfo(
        raw.id, raw.type, raw.key_size, raw.value_size, raw.max_entries, raw.name.decode()
    )


class Map(Closing, Generic[K, V]):
    """Typed access to a map through its fd: keys and values are ctypes instances."""

    def __init__(self, fd: int, key: type[K], value: type[V], name: str, owned: bool) -> None:
        self.fd = fd
        self.key_type = key
        self.value_type = value
        self.name = name
        self._owned = owned

    @classmethod
    def of(cls, spec: abi.MapSpec[K, V], fds: dict[str, int], owned: bool) -> Map[K, V]:
        """The map *spec* names, from a table of fds by map name."""
        return cls(fds[spec.name], spec.key, spec.value, spec.name, owned)

    @classmethod
    def pinned(cls, path: Path, key: type[K], value: type[V]) -> Map[K, V]:
        """Open a pinned map, checking it has the key and value sizes this code expects."""
        fd = obj_get(path)
        info = map_info(fd)
        if info.key_size != ctypes.sizeof(key) or info.value_size != ctypes.sizeof(value):
            os.close(fd)
            raise PinnedStateMismatch(
                f"map pinned at {path} has key/value sizes {info.key_size}/{info.value_size}, "
                f"this smesh expects {ctypes.sizeof(key)}/{ctypes.sizeof(value)}; "
                "detach capture and attach again"
            )
        return cls(fd, key, value, path.name, owned=True)

    def lookup(self, key: K) -> V | None:
        value = self.value_type()
        ret = _lib().bpf.bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        if ret < 0:
            if abs(ret) == errnos.ENOENT:
                return None
            _check(ret, f"looking up in map {self.name}")
        return value

    def update(self, key: K, value: V, flags: int = BPF_ANY) -> None:
        _check(
            _lib().bpf.bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags),
            f"updating map {self.name}",
        )

    def delete(self, key: K) -> bool:
        ret = _lib().bpf.bpf_map_delete_elem(self.fd, ctypes.byref(key))
        if ret < 0:
            if abs(ret) == errnos.ENOENT:
                return False
            _check(ret, f"deleting from map {self.name}")
        return True

    def keys(self) -> Iterator[K]:
        """Every key (get_next_key from the start); entries may change underneath."""
        previous: K | None = None
        while True:
            nxt = self.key_type()
            ret = _lib().bpf.bpf_map_get_next_key(
                self.fd, None if previous is None else ctypes.byref(previous), ctypes.byref(nxt)
            )
            if ret < 0:
                if abs(ret) == errnos.ENOENT:
                    return
                _check(ret, f"iterating map {self.name}")
            yield nxt
            previous = nxt

    def items(self) -> Iterator[tuple[K, V]]:
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def count(self) -> int:
        return sum(1 for _ in self.keys())

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


S = TypeVar("S", bound=ctypes.Structure)


class PerCpuArray(Generic[S]):
    """A per-CPU array: one value per possible CPU for each index."""

    def __init__(self, fd: int, value: type[S], name: str, owned: bool = False) -> None:
        self.fd = fd
        self.value_type = value
        self.name = name
        self._owned = owned
        self._cpus = num_possible_cpus()
        self._stride = (ctypes.sizeof(value) + 7) // 8 * 8

    def lookup(self, index: int) -> list[S]:
        buf = ctypes.create_string_buffer(self._stride * self._cpus)
        key = ctypes.c_uint32(index)
        _check(
            _lib().bpf.bpf_map_lookup_elem(self.fd, ctypes.byref(key), buf),
            f"reading per-CPU map {self.name}[{index}]",
        )
        return [
            self.value_type.from_buffer_copy(buf.raw, cpu * self._stride)
            for cpu in range(self._cpus)
        ]

    def reset(self, index: int) -> None:
        buf = ctypes.create_string_buffer(self._stride * self._cpus)
        key = ctypes.c_uint32(index)
        _check(
            _lib().bpf.bpf_map_update_elem(self.fd, ctypes.byref(key), buf, BPF_ANY),
            f"resetting per-CPU map {self.name}[{index}]",
        )

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- ring buffer -------------------------------------------------------------------------


class RingBuffer(Closing):
    """Consume records from one or more BPF ring buffers, each with its own callback."""

    def __init__(self) -> None:
        self._ptr: int | None = None
        self._error: BaseException | None = None
        self._callbacks: list[object] = []  # the C side keeps pointers: keep them alive

    def _wrap(self, callback: Callable[[bytes], None]) -> object:
        def on_sample(_ctx: int | None, data: int | None, size: int) -> int:
            try:
                callback(ctypes.string_at(data, size) if data else b"")
            except BaseException as exc:  # handed to poll()'s caller; stops consuming
                self._error = exc
                return -1
            return 0

        wrapped = _SAMPLE_FN(on_sample)
        self._callbacks.append(wrapped)
        return wrapped

    def add(self, map_fd: int, callback: Callable[[bytes], None]) -> None:
        sample = self._wrap(callback)
        if self._ptr is None:
            with _captured() as said:
                ptr = _lib().bpf.ring_buffer__new(map_fd, sample, None, None)
            self._ptr = _checked_ptr(ptr, "opening the event ring buffer", said)
        else:
            _check(
                _lib().bpf.ring_buffer__add(self._ptr, map_fd, sample, None),
                "adding a ring buffer",
            )

    def poll(self, timeout_ms: int) -> int:
        """Wait up to *timeout_ms* for records and consume them; returns how many."""
        if self._ptr is None:
            raise BpfError("ring buffer has no map")
        ret = _lib().bpf.ring_buffer__poll(self._ptr, timeout_ms)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if ret < 0 and abs(ret) != errnos.EINTR:
            _check(ret, "polling the event ring buffer")
        return max(int(ret), 0)

    def close(self) -> None:
        if self._ptr is not None:
            _lib().bpf.ring_buffer__free(self._ptr)
            self._ptr = None
        self._callbacks.clear()


# --- the kernel's lists of programs and links (status, tests) ----------------------------


def _ids(next_fn: Callable[[int, object], int]) -> list[int]:
    found: list[int] = []
    current = ctypes.c_uint32(0)
    while True:
        nxt = ctypes.c_uint32(0)
        if next_fn(current.value, ctypes.byref(nxt)) < 0:
            return found
        found.append(nxt.value)
        current = nxt


def programs() -> list[ProgInfo]:
    """Every BPF program loaded in the kernel (id, type, name)."""
    lib = _lib().bpf
    result = []
    for prog_id in _ids(lib.bpf_prog_get_next_id):
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            continue  # gone meanwhile
        try:
            raw = _ProgInfo()
            _info(fd, raw, f"program {prog_id}")
            result.append(ProgInfo(raw.id, raw.type, raw.name.decode(errors="replace")))
        finally:
            os.close(fd)
    return result


def links() -> list[LinkInfo]:
    """Every BPF link in the kernel."""
    lib = _lib().bpf
    result = []
    for link_id in _ids(lib.bpf_link_get_next_id):
        fd = lib.bpf_link_get_fd_by_id(link_id)
        if fd < 0:
            continue
        try:
            raw = _LinkInfo()
            _info(fd, raw, f"link {link_id}")
            result.append(LinkInfo(raw.id, raw.prog_id, raw.cgroup_id, raw.attach_type))
        finally:
            os.close(fd)
    return result


def maps() -> list[MapInfo]:
    """Every BPF map in the kernel."""
    lib = _lib().bpf
    result = []
    for map_id in _ids(lib.bpf_map_get_next_id):
        fd = lib.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            continue
        try:
            result.append(map_info(fd))
        finally:
            os.close(fd)
    return result
