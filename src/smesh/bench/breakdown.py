"""Where each proxy's CPU per round trip goes (``smesh bench --breakdown``).

While sockperf's ping-pong runs (a pass of its own after each rtt repetition, so perf's
cost stays out of the rtt figures), ``perf record -a -e cpu-clock -G CGROUP`` samples every
thread that runs in the proxies' cgroups (threads and children started mid-run included,
which a ``-p PID`` list would miss: stunnel starts a thread per connection), and
``perf stat`` counts their context switches the same way. The cgroups' ``cpu.stat``
(user, system) read before and after gives the CPU; the samples split it by the code it
ran (kernel, interpreter, uvloop, OpenSSL, libc, the tunnel's own binary, other), so the
parts sum to the CPU by construction. Everything is per round trip (sockperf's count).

perf starts with its events disabled and is enabled through its control pipe, whose
acknowledgement says it records: its start-up (reading every process's maps with ``-a``)
takes no time from the window, and no round trip goes unrecorded.

The parsing and the arithmetic are pure functions, tested apart from perf.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from smesh.bench.errors import BenchError

PACKAGE = "linux-perf"  # the Debian package that provides /usr/bin/perf
FREQUENCY_HZ = 4999  # "5 kHz", off the timer tick so sampling does not beat against it
EVENT = "cpu-clock"  # a software clock: present in every VM, unlike the PMU's cycles
START_TIMEOUT_S = 60.0  # -a reads every process's maps first; slow on a busy machine

# The parts, in the order the report shows them.
PARTS = ("kernel", "python", "uvloop", "openssl", "libc", "own", "other")
PART_TITLES = {
    "kernel": "kernel",
    "python": "Python interpreter",
    "uvloop": "uvloop",
    "openssl": "OpenSSL",
    "libc": "libc",
    "own": "the tunnel's own binary",
    "other": "other",
}
# perf names user-space oddities in brackets too; every other bracketed name is the kernel
# or one of its modules ([kernel.kallsyms], [veth], [nf_tables], ...).
_USER_BRACKETS = frozenset(
    {"[vdso]", "[vsyscall]", "[vvar]", "[unknown]", "[heap]", "[stack]", "[anon]", "[uprobes]"}
)
_PYTHON = re.compile(r"(lib)?python3(\.\d+)?[a-z]*(\.so(\.[\d.]+)?)?")
_UVLOOP = re.compile(r"loop\.cpython-.*\.so")
_OPENSSL = re.compile(r"(libssl|libcrypto)\.so(\.[\d.]+)?|_ssl\.cpython-.*\.so")
_LIBC = re.compile(r"libc\.so(\.[\d.]+)?|libc-[\d.]+\.so")
_REPORT_ROW = re.compile(r"^\s*([\d.]+)%\s+(\d+)\s+(\S.*?)\s*$")


def classify(dso: str, own: Iterable[str] = ()) -> str:
    """The part a DSO's samples count to; names match whole, so ``libc.so.6`` is libc and
    ``libcrypto.so.3`` is OpenSSL, never the other way round."""
    name = dso.rsplit("/", 1)[-1]
    if name.startswith("[") and name.endswith("]"):
        return "other" if name in _USER_BRACKETS or name.startswith("[JIT]") else "kernel"
    if name.startswith("bpf_prog_"):  # a JIT-compiled BPF program: smesh's capture
        return "kernel"
    if _PYTHON.fullmatch(name):
        return "python"
    if _UVLOOP.fullmatch(name):
        return "uvloop"
    if _OPENSSL.fullmatch(name):
        return "openssl"
    if _LIBC.fullmatch(name):
        return "libc"
    if name in set(own):
        return "own"
    return "other"


def dso_samples(report: str) -> dict[str, int]:
    """Samples per DSO in ``perf report --stdio --sort dso -n`` output, summed over its
    event sections (one per cgroup: ``-e cpu-clock -e cpu-clock -G a,b``)."""
    found: dict[str, int] = {}
    for line in report.splitlines():
        if line.lstrip().startswith("#"):
            continue
        match = _REPORT_ROW.match(line)
        if match:
            dso = match.group(3)
            found[dso] = found.get(dso, 0) + int(match.group(2))
    return found


def stat_counts(text: str) -> dict[str, float]:
    """Counts per event in ``perf stat -x,`` output, summed over cgroups; an event perf
    did not count (``<not counted>``: nothing of the cgroup ran) is 0."""
    counts: dict[str, float] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        value, event = fields[0].strip(), fields[2].strip()
        if not event:
            continue
        try:
            number = float(value)
        except ValueError:
            if value.startswith("<not supported>"):
                raise BenchError(f"perf stat: the kernel does not support {event}") from None
            number = 0.0  # <not counted>
        counts[event] = counts.get(event, 0.0) + number
    return counts


def cpu_stat(text: str) -> tuple[int, int]:
    """User and system µs of a cgroup's ``cpu.stat``."""
    values = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
    try:
        return int(values["user_usec"]), int(values["system_usec"])
    except (KeyError, ValueError):
        raise BenchError(f"cpu.stat lacks user_usec/system_usec: {text[:200]!r}") from None


@dataclass(frozen=True)
class Breakdown:
    """One repetition's CPU per round trip (µs), both proxies together."""

    round_trips: int
    cpu_us: float
    user_us: float
    system_us: float
    parts_us: dict[str, float]
    context_switches: float
    samples: int
    own: list[str] = field(default_factory=list)
    dsos: dict[str, int] = field(default_factory=dict)  # perf's samples, for a second look

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def split(
    round_trips: int,
    user_usec: int,
    system_usec: int,
    dsos: Mapping[str, int],
    context_switches: float,
    *,
    own: Sequence[str] = (),
) -> Breakdown:
    """Per round trip: the cgroups' CPU, divided over the parts as perf's samples are."""
    if round_trips <= 0:
        raise BenchError("sockperf counted no round trip: no CPU per round trip to give")
    total = sum(dsos.values())
    if total == 0:
        raise BenchError(
            "perf recorded no sample of the proxies' cgroups during the round trips "
            "(is the perf_event controller available on the cgroup v2 hierarchy?)"
        )
    per = 1.0 / round_trips
    cpu = (user_usec + system_usec) * per
    counted = dict.fromkeys(PARTS, 0)
    for dso, samples in dsos.items():
        counted[classify(dso, own)] += samples
    return Breakdown(
        round_trips=round_trips,
        cpu_us=cpu,
        user_us=user_usec * per,
        system_us=system_usec * per,
        parts_us={part: cpu * counted[part] / total for part in PARTS},
        context_switches=context_switches * per,
        samples=total,
        own=sorted(own),
        dsos=dict(sorted(dsos.items(), key=lambda kv: -kv[1])),
    )


# -- the report ----------------------------------------------------------------------------

ROWS: tuple[tuple[str, str], ...] = (
    ("p50_us", "rtt p50 µs, under perf"),
    ("p99_us", "rtt p99 µs, under perf"),
    ("cpu_us", "CPU µs"),
    ("user_us", "user µs"),
    ("system_us", "system µs"),
    *((f"parts_us.{p}", f"{PART_TITLES[p]} µs") for p in PARTS),
    ("context_switches", "context switches"),
    ("samples", "perf samples"),
)


def _cell(values: Sequence[float]) -> str:
    if not values or not any(values):
        return "-"
    median, low, high = statistics.median(values), min(values), max(values)
    digits = 0 if median >= 100 else 1 if median >= 10 else 2
    if low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _field(entry: Mapping[str, Any], key: str) -> float:
    head, _, part = key.partition(".")
    value = entry[head][part] if part else entry[head]
    return float(value)


def table(document: Mapping[str, Any]) -> str | None:
    """The breakdown of every variant that has one, side by side (None: none has)."""
    notes = document.get("notes", {})
    found = {v: n["cpu_breakdown"] for v, n in notes.items() if n.get("cpu_breakdown")}
    if not found:
        return None
    names = list(found)
    lines = [
        "| per round trip, both proxies | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key, title in ROWS:
        cells = [_cell([_field(e, key) for e in found[v]]) for v in names]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- recording -----------------------------------------------------------------------------


def require_perf() -> str:
    """perf's path, or an error that names the package to install."""
    perf = shutil.which("perf")
    problem = "is not installed"
    if perf is not None:
        try:
            proc = subprocess.run(
                [perf, "version"], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            problem = f"does not run ({exc})"
        else:
            if proc.returncode == 0:
                return perf
            problem = f"does not run: {(proc.stderr or proc.stdout).strip()[-200:]}"
    raise BenchError(
        f"--breakdown needs perf, which {problem}: install the Debian package {PACKAGE} "
        f"(apt-get install {PACKAGE}, or `make setup`)"
    )


def _own_binaries(cgroups: Iterable[Path]) -> list[str]:
    """The proxies' executables, by the name perf gives their DSO (the interpreter is not
    a tunnel's own code: it is a part of its own)."""
    names: set[str] = set()
    for cgroup in cgroups:
        for pid in (cgroup / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                names.add(os.path.basename(os.readlink(f"/proc/{pid}/exe")))
    return sorted(n for n in names if classify(n) == "other")


class _Perf:
    """One perf process started with its events off, switched through its control pipe."""

    def __init__(self, argv: list[str], log: Path) -> None:
        ctl_read, self._ctl = os.pipe()
        self._ack, ack_write = os.pipe()
        self.name = argv[1]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv[:2], "-D", "-1", "--control", f"fd:{ctl_read},{ack_write}", *argv[2:]],
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(ctl_read, ack_write),
            )
        os.close(ctl_read)
        os.close(ack_write)

    def command(self, word: str, timeout: float) -> None:
        os.write(self._ctl, f"{word}\n".encode())
        deadline = time.monotonic() + timeout
        answer = b""
        while b"\n" not in answer:  # perf writes "ack\n\0"
            ready, _, _ = select.select([self._ack], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(self._ack, 64) if ready else b""
            if not chunk:
                tail = self.log.read_text(errors="replace").strip()[-300:]
                raise BenchError(f"perf {self.name} did not acknowledge {word!r}: {tail}")
            answer += chunk

    def stop(self) -> None:
        """SIGINT: perf writes its data (record) or its counts (stat) and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in (self._ctl, self._ack):
            with contextlib.suppress(OSError):
                os.close(fd)


class Recorder:
    """perf on the proxies' cgroups and their cpu.stat around one measured window::

    with Recorder(cgroups, root, workdir) as recording:
        ...  # the round trips
    breakdown = recording.result(round_trips)
    """

    def __init__(self, cgroups: Sequence[Path], cgroup_root: Path, workdir: Path) -> None:
        if not cgroups:
            raise BenchError("a breakdown needs a proxy's cgroup; this variant has none")
        self.cgroups = list(cgroups)
        self.workdir = workdir
        self.perf = require_perf()
        self.names = ",".join(str(c.relative_to(cgroup_root)) for c in self.cgroups)
        self.own = _own_binaries(self.cgroups)
        self.data = workdir / "perf.data"
        self.counts = workdir / "perf-stat.csv"
        self._running: list[_Perf] = []
        self._before = self._after = (0, 0)

    def _cpu(self) -> tuple[int, int]:
        readings = [cpu_stat((c / "cpu.stat").read_text()) for c in self.cgroups]
        return sum(u for u, _ in readings), sum(s for _, s in readings)

    def __enter__(self) -> Recorder:
        self.workdir.mkdir(parents=True, exist_ok=True)
        events = [a for _ in self.cgroups for a in ("-e", EVENT)]
        switches = [a for _ in self.cgroups for a in ("-e", "context-switches")]
        log = self.workdir / "perf.log"
        try:
            self._running.append(_Perf(
                [self.perf, "record", "-q", "-a", *events, "-G", self.names,
                 "-F", str(FREQUENCY_HZ), "-o", str(self.data)], log,
            ))  # fmt: skip
            self._running.append(_Perf(
                [self.perf, "stat", "-a", "-x,", *switches, "-G", self.names,
                 "-o", str(self.counts)], log,
            ))  # fmt: skip
            for perf in self._running:
                perf.command("enable", START_TIMEOUT_S)
        except BaseException:
            self._stop()
            raise
        self._before = self._cpu()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._after = self._cpu()
        finally:
            self._stop()

    def _stop(self) -> None:
        for perf in self._running:
            perf.stop()
        self._running.clear()

    def result(self, round_trips: int) -> Breakdown:
        report = subprocess.run(
            [self.perf, "report", "-i", str(self.data), "--stdio", "--sort", "dso", "-n", "-q"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if report.returncode != 0:
            raise BenchError(f"perf report failed: {report.stderr.strip()[-300:]}")
        (self.workdir / "perf-report.txt").write_text(report.stdout)
        counts = stat_counts(self.counts.read_text())
        user = self._after[0] - self._before[0]
        system = self._after[1] - self._before[1]
        return split(
            round_trips,
            user,
            system,
            dso_samples(report.stdout),
            counts.get("context-switches", 0.0),
            own=self.own,
        )
