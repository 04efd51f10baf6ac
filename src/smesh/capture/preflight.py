"""Can this machine run a smesh agent? One check per kernel or system fact capture stands on.

``smesh check`` prints these, as ``linkerd check`` and ``cilium status`` do for theirs: each
check says what it found and, when it fails, the one thing to do about it. The BPF checks
ask the kernel through libbpf's probes (a trivial program, map or helper call loaded and
dropped) and then load smesh's own objects: a probe says which feature is missing, the
load proves the real programs pass this kernel's verifier.

The helpers are read from the compiled objects themselves (every ``call`` instruction of
every program section), so the list is what the agent will load, not what someone
remembered to write down. Where things are (BTF, mounts, the objects, the process status)
is a :class:`Places` parameter, so a test can point a check at a missing path instead of
faking a kernel.
"""

from __future__ import annotations

import functools
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from smesh.capture import abi
from smesh.capture.errors import BpfObjectMissing
from smesh.errors import SmeshError
from smesh.linux import cpuidle, privileges

Status = Literal["ok", "warn", "fail"]

# enum bpf_prog_type / bpf_map_type (<linux/bpf.h>): stable kernel ABI numbers.
PROG_TYPES = {
    "cgroup_skb": 8,
    "sock_ops": 13,
    "cgroup_sock_addr": 18,
    "cgroup_sockopt": 25,
}
#: The map types of bpf/maps.h (a unit test keeps this list and the sources in step).
MAP_TYPES = {
    "hash": 1,
    "array": 2,
    "percpu_array": 6,
    "lpm_trie": 11,
    "sk_storage": 24,
    "ringbuf": 27,
}
#: Names of the helper numbers smesh's programs call (enum bpf_func_id), for the output.
HELPER_NAMES = {
    1: "map_lookup_elem",
    2: "map_update_elem",
    3: "map_delete_elem",
    5: "ktime_get_ns",
    14: "get_current_pid_tgid",
    16: "get_current_comm",
    46: "get_socket_cookie",
    59: "sock_ops_cb_flags_set",
    107: "sk_storage_get",
    108: "sk_storage_delete",
    122: "get_netns_cookie",
    131: "ringbuf_reserve",
    132: "ringbuf_submit",
}
#: ELF section name (libbpf's SEC()) → program type.
SECTION_TYPES = (
    ("cgroup/connect", "cgroup_sock_addr"),
    ("cgroup/getpeername", "cgroup_sock_addr"),
    ("cgroup/getsockopt", "cgroup_sockopt"),
    ("cgroup_skb/", "cgroup_skb"),
    ("sockops", "sock_ops"),
)
CAPABILITIES = (
    ("CAP_BPF", privileges.CAP_BPF),
    ("CAP_NET_ADMIN", privileges.CAP_NET_ADMIN),
    ("CAP_SYS_ADMIN", privileges.CAP_SYS_ADMIN),
)
ROOT_FIX = (
    "run as root (the chart's agent DaemonSet is privileged; a container needs CAP_BPF, "
    "CAP_NET_ADMIN and CAP_SYS_ADMIN)"
)


@dataclass(frozen=True)
class Places:
    """Where the checks look: the machine's own paths unless a caller (a test) says not."""

    btf: Path = Path("/sys/kernel/btf/vmlinux")
    mounts: Path = Path("/proc/mounts")
    bpffs: Path = Path("/sys/fs/bpf")
    status: Path = Path("/proc/self/status")
    objects: Path = field(default_factory=abi.objects_dir)
    nft: str = "nft"
    cpus: Path = cpuidle.CPU_SYSFS
    modules: Path = cpuidle.MODULE_SYSFS


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


class ObjectUnreadable(SmeshError):
    """A compiled BPF object is not an ELF file smesh can read."""


def program_helpers(path: Path) -> dict[str, set[int]]:
    """The helper numbers each program section of BPF object *path* calls, by section name.

    A BPF ``call`` (opcode 0x85) with source register 0 calls helper ``imm``; 1 is a call
    to another BPF function in the object, 2 a kernel function: neither is a helper.
    """
    data = path.read_bytes()
    if len(data) < 6 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ObjectUnreadable(f"{path} is not a 64-bit little-endian ELF file (a BPF object)")
    try:
        return _calls(data)
    except (struct.error, ValueError, IndexError) as exc:  # offsets past the end: cut short
        raise ObjectUnreadable(f"{path} is a damaged ELF file ({exc}): rebuild it") from None


def _calls(data: bytes) -> dict[str, set[int]]:
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = sections[shstrndx][4]

    def name_of(offset: int) -> str:
        start = names_at + offset
        return data[start : data.index(b"\0", start)].decode()

    found: dict[str, set[int]] = {}
    for name_off, kind, flags, _addr, offset, size in sections:
        if kind != 1 or not flags & 0x4:  # SHT_PROGBITS with SHF_EXECINSTR: code
            continue
        helpers = found.setdefault(name_of(name_off), set())
        for at in range(offset, offset + size - 7, 8):
            code, regs, _off, imm = struct.unpack_from("<BBhi", data, at)
            if code == 0x85 and regs >> 4 == 0:
                helpers.add(imm)
    return found


def _prog_type_of(section: str) -> str | None:
    return next((kind for prefix, kind in SECTION_TYPES if section.startswith(prefix)), None)


def helpers_used(objects: Path) -> dict[str, set[int]]:
    """Program type → the helpers smesh's objects call from programs of that type."""
    used: dict[str, set[int]] = {}
    for stem in abi.OBJECTS:
        for section, helpers in program_helpers(abi.object_path(stem, objects)).items():
            kind = _prog_type_of(section)
            if kind is not None:
                used.setdefault(kind, set()).update(helpers)
    return used


def _mount_types(places: Places) -> list[tuple[str, str]]:
    """(mount point, file system type) of every mount."""
    found = []
    for line in places.mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            found.append((fields[1].replace("\\040", " "), fields[2]))
    return found


def _privileges(places: Places) -> Iterator[Check]:
    try:
        have = privileges.effective_capabilities(places.status.read_text())
    except (OSError, SmeshError) as exc:
        yield Check("privileges", "fail", f"cannot read {places.status}: {exc}", ROOT_FIX)
        return
    missing = [name for name, bit in CAPABILITIES if not have & (1 << bit)]
    names = ", ".join(name for name, _ in CAPABILITIES)
    if missing:
        yield Check("privileges", "fail", f"missing {', '.join(missing)}", ROOT_FIX)
    else:
        yield Check("privileges", "ok", f"{names} effective")


def _btf(places: Places) -> Iterator[Check]:
    if places.btf.is_file():
        yield Check("kernel BTF", "ok", f"{places.btf}")
    else:
        yield Check(
            "kernel BTF",
            "fail",
            f"{places.btf} is missing",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (every major distribution's "
            "current kernel is)",
        )


def _cgroup_v2(places: Places) -> Iterator[Check]:
    mounts = _mount_types(places)
    v2 = [point for point, kind in mounts if kind == "cgroup2"]
    if not v2:
        yield Check(
            "cgroup v2",
            "fail",
            f"no cgroup2 file system in {places.mounts}",
            "boot with a unified (or hybrid) cgroup hierarchy (systemd's default), or mount "
            "one: `mount -t cgroup2 none /sys/fs/cgroup/unified`",
        )
        return
    hybrid = any(point == "/sys/fs/cgroup" and kind != "cgroup2" for point, kind in mounts)
    note = " (hybrid: cgroup v1 controllers beside it; capture uses the v2 tree)" if hybrid else ""
    yield Check("cgroup v2", "ok", f"mounted at {v2[0]}{note}")


def _bpffs(places: Places) -> Iterator[Check]:
    if any(point == str(places.bpffs) and kind == "bpf" for point, kind in _mount_types(places)):
        yield Check("bpffs", "ok", f"mounted at {places.bpffs}")
    else:
        # Not fatal: the agent mounts it at start (smesh.capture.system.ensure_bpffs), but a
        # pin there does not outlive a container's mount namespace unless the host has it.
        yield Check(
            "bpffs",
            "warn",
            f"no BPF file system at {places.bpffs}; the agent mounts one at start, but pins "
            "survive an agent restart only on the host's mount",
            f"`mount -t bpf bpf {places.bpffs}` (or an fstab entry)",
        )


def _probe(name: str, run: Callable[[], bool], missing: str, fix: str) -> Check:
    try:
        ok = run()
    except SmeshError as exc:
        return Check(name, "fail", f"cannot probe: {exc}", ROOT_FIX)
    return Check(name, "ok", "supported") if ok else Check(name, "fail", missing, fix)


def _bpf_features(places: Places) -> Iterator[Check]:
    from smesh.capture import libbpf  # noqa: PLC0415 - libbpf1 is needed for these only

    kernel_fix = (
        "eBPF capture needs about Linux 5.15 with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF; "
        "on an older kernel use nftables capture (capture.mode: nftables)"
    )
    try:
        used = helpers_used(places.objects)
    except (OSError, SmeshError) as exc:
        used = {}
        yield Check(
            "BPF helpers",
            "fail",
            f"cannot read the compiled objects in {places.objects}: {exc}",
            "build them with `make bpf` (or point SMESH_BPF_DIR at the directory holding the "
            ".bpf.o files)",
        )
    for kind, number in PROG_TYPES.items():
        yield _probe(
            f"BPF program type {kind}",
            functools.partial(libbpf.probe_prog_type, number),
            "this kernel does not load it",
            kernel_fix,
        )
    for kind, number in MAP_TYPES.items():
        yield _probe(
            f"BPF map type {kind}",
            functools.partial(libbpf.probe_map_type, number),
            "this kernel does not create it",
            kernel_fix,
        )
    for kind, helpers in sorted(used.items()):
        refused = []
        for helper in sorted(helpers):
            try:
                if not libbpf.probe_helper(PROG_TYPES[kind], helper):
                    refused.append(HELPER_NAMES.get(helper, f"#{helper}"))
            except SmeshError as exc:
                yield Check(f"BPF helpers of {kind}", "fail", f"cannot probe: {exc}", ROOT_FIX)
                break
        else:
            names = ", ".join(HELPER_NAMES.get(h, f"#{h}") for h in sorted(helpers))
            if refused:
                yield Check(
                    f"BPF helpers of {kind}",
                    "fail",
                    f"not callable here: {', '.join(refused)}",
                    kernel_fix,
                )
            else:
                yield Check(f"BPF helpers of {kind}", "ok", names)


def _objects(places: Places) -> Iterator[Check]:
    from smesh.capture import libbpf  # noqa: PLC0415

    for stem in abi.OBJECTS:
        path = abi.object_path(stem, places.objects)
        try:
            with libbpf.BpfObject(path) as obj:
                obj.map(abi.MapName.CONNS).set_max_entries(16)  # a probe needs no room
                obj.load()
        except BpfObjectMissing:
            yield Check(
                f"BPF object {stem}",
                "fail",
                f"{path} not found",
                "build them with `make bpf` (or point SMESH_BPF_DIR at the directory holding "
                "the .bpf.o files)",
            )
        except SmeshError as exc:
            fix = "the checks above name the missing kernel feature or privilege"
            yield Check(f"BPF object {stem}", "fail", str(exc), fix)
        else:
            yield Check(f"BPF object {stem}", "ok", f"{path} loads")


def _nftables(places: Places, ebpf_works: bool) -> Iterator[Check]:
    """The fallback (capture.mode auto falls back to it): needed only without eBPF."""
    status: Status = "warn" if ebpf_works else "fail"
    when = (
        "eBPF works: needed only for capture.mode: nftables"
        if ebpf_works
        else "needed: eBPF capture is not possible here"
    )
    fix = "install nftables (Debian: apt install nftables)"
    binary = shutil.which(places.nft)
    if binary is None:
        yield Check("nftables (fallback)", status, f"`{places.nft}` is not installed ({when})", fix)
        return
    proc = subprocess.run(
        [binary, "list", "tables"], capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        yield Check(
            "nftables (fallback)",
            status,
            f"`nft list tables` failed: {' '.join(proc.stderr.split()) or proc.returncode} "
            f"({when})",
            "run as root; the kernel needs CONFIG_NF_TABLES",
        )
        return
    yield Check("nftables (fallback)", "ok", f"{binary} works")


def cpu_idle(places: Places) -> Check:
    """Not a condition of capture but of its latency: where idle vCPUs halt without
    polling, every proxy's round trip pays the hypervisor twice (smesh.linux.cpuidle)."""
    found = cpuidle.idling(places.cpus, places.modules)
    if found.halts_at_once:
        return Check(
            "CPU idle",
            "warn",
            "haltpoll cpuidle driver with guest halt polling off (guest_halt_poll_ns 0): idle "
            "vCPUs halt at once and each wake-up goes through the hypervisor, about two per "
            "round trip through a node proxy; such round trips measured 3 to 6 times as long "
            'as with polling (docs/benchmarks.md, "The virtual CPUs\' idle halts")',
            "let idle vCPUs poll before they halt: write "
            f"{cpuidle.DEFAULT_POLL_NS} (the driver's default, in ns) to "
            f"{places.modules / 'haltpoll' / 'parameters' / 'guest_halt_poll_ns'}, or boot "
            f"with haltpoll.guest_halt_poll_ns={cpuidle.DEFAULT_POLL_NS}; polling spends "
            "CPU while idle, so it is the node's choice, not smesh's",
        )
    if found.driver is None:
        return Check("CPU idle", "ok", "no cpuidle driver")
    if found.polls_ns is not None:
        return Check(
            "CPU idle",
            "ok",
            f"haltpoll cpuidle driver; an idle vCPU polls up to "
            f"{found.polls_ns / 1000:g} µs before it halts",
        )
    return Check("CPU idle", "ok", f"{found.driver} cpuidle driver")


def run(places: Places | None = None) -> list[Check]:
    """Every check, in the order a person would fix them."""
    places = places or Places()
    privileged = list(_privileges(places))
    checks = [*privileged, *_btf(places), *_cgroup_v2(places), *_bpffs(places)]
    if any(c.failed for c in privileged):
        # Unprivileged, libbpf's probes answer "not supported" for what the kernel has:
        # a list of missing features would send the reader after the wrong problem.
        bpf = [
            Check(
                "BPF features and objects",
                "fail",
                "not probed: the kernel answers BPF probes only to CAP_BPF (or root)",
                ROOT_FIX,
            )
        ]
    else:
        bpf = [*_bpf_features(places), *_objects(places)]
    checks += bpf
    checks += _nftables(places, ebpf_works=not any(c.failed for c in bpf))
    checks.append(cpu_idle(places))
    return checks
