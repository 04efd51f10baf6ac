"""One benchmark run: for each variant, a fresh lab, the same servers, the same figures.

Variants run one after another on the same machine in the same run, so their figures
compare; each gets its own lab (``--no-mesh`` unless the variant is smesh) that is torn
down even when a measurement fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smesh.bench import breakdown, conditions, figures, parse, processes
from smesh.bench.errors import BenchError
from smesh.bench.processes import Started
from smesh.bench.variants import (
    CLIENT_POD,
    PROXY_NICE,
    SERVER_POD,
    SERVICES,
    Context,
    Variant,
    build,
)
from smesh.lab import api
from smesh.linux import cgroups, cpuidle, netns

Progress = Callable[[str], None]
GROUPS = ("throughput", "rtt", "cps", "memory")
GROUP_FIGURES = {
    "throughput": ("throughput_1_gbps", "throughput_4_gbps", "cpu_s_per_gb"),
    "rtt": ("rtt_p50_us", "rtt_p99_us"),
    "cps": ("cps",),
    "memory": ("rss_kib_per_idle_conn",),
}
CPS_CONCURRENCY = 8
SYSCTLS = {
    # Thousands of short connections from one pod: reuse TIME_WAIT ports, as load tests do.
    "net.ipv4.tcp_tw_reuse": "1",
    "net.ipv4.ip_local_port_range": "1024 65535",
}


@dataclass(frozen=True)
class Plan:
    variants: tuple[str, ...]
    groups: tuple[str, ...] = GROUPS
    repetitions: int = 3
    iperf_seconds: int = 5
    rtt_seconds: int = 6
    cps_seconds: float = 3.0
    idle_connections: int = 1000
    profile: Path | None = None  # py-spy flame graphs of Python proxies go here
    breakdown: bool = False  # rtt again under perf: notes.VARIANT.cpu_breakdown

    @classmethod
    def full(cls, variants: Sequence[str], groups: Sequence[str] = GROUPS) -> Plan:
        return cls(tuple(variants), tuple(groups))

    @classmethod
    def quick(cls, variants: Sequence[str], groups: Sequence[str] = GROUPS) -> Plan:
        """A smoke run: every figure once, briefly (the figures are noisier)."""
        return cls(tuple(variants), tuple(groups), 1, 2, 1, 1.0, 200)


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: str, value: float) -> None:
        self.values.setdefault(figure, []).append(value)

    def summary(self) -> dict[str, figures.Summary]:
        return {name: figures.summarize(v) for name, v in self.values.items() if v}


def machine() -> dict[str, Any]:
    """What a reader needs to weigh the figures: CPU, memory, kernel, crypto, peer versions."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal:"))
    return {
        "cpu": model,
        "cpus": len(cpuinfo.split("processor\t:")) - 1,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "peers": {name: _version(argv) for name, argv in _PEER_VERSIONS.items()},
    }


_PEER_VERSIONS = {
    "stunnel": ["stunnel", "-version"],
    "haproxy": ["haproxy", "-v"],
    "iperf3": ["iperf3", "--version"],
    "sockperf": ["sockperf", "--version"],
}


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "missing"
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    wanted = next(
        (ln for ln in lines if argv[0] in ln.lower() and any(c.isdigit() for c in ln)), ""
    )
    return wanted or (lines[0] if lines else "unknown")


class Measurement:
    """The figures of one variant in its own lab."""

    def __init__(self, plan: Plan, variant: Variant, ctx: Context, progress: Progress) -> None:
        self.plan = plan
        self.variant = variant
        self.ctx = ctx
        self.progress = progress
        self.samples = Samples()
        self.servers: list[Started] = []
        self.holders: list[Started] = []

    # -- set-up --------------------------------------------------------------------------

    def start_servers(self) -> None:
        """The apps' servers, in the bench's session at its nice value like the clients:
        the same for every variant (the proxies take the agents' weight, PROXY_NICE)."""
        ports = dict(SERVICES)
        log = self.ctx.workdir / "servers.log"
        commands = [
            ["iperf3", "-s", "-p", str(ports["iperf"])],
            ["sockperf", "server", "--tcp", "-p", str(ports["sockperf"])],
            [sys.executable, "-m", "smesh.bench.load", "serve", str(ports["echo"])],
        ]
        for argv, port in zip(commands, ports.values(), strict=True):
            server = Started(self.ctx.lab, SERVER_POD, argv, log)
            self.servers.append(server)
            server.wait_listening([port])

    def stop(self) -> None:
        self._release_holders()
        self.variant.stop()
        for server in self.servers:
            server.stop()
        self.servers.clear()

    # -- readings ------------------------------------------------------------------------

    def _cpu(self) -> float:
        return sum(processes.cgroup_cpu_seconds(c) for c in self.variant.proxy_cgroups(self.ctx))

    def _rss(self) -> int:
        return sum(processes.cgroup_rss_kib(c) for c in self.variant.proxy_cgroups(self.ctx))

    def _client(self, argv: Sequence[str], timeout: float) -> str:
        return processes.run(self.ctx.lab, CLIENT_POD, argv, timeout)

    def _cps_once(self, seconds: float, concurrency: int) -> dict[str, Any]:
        host, port = self.variant.target(self.ctx, "echo")
        argv = [sys.executable, "-m", "smesh.bench.load", "cps", host, str(port)]
        out = self._client([*argv, str(seconds), str(concurrency)], seconds + 60)
        result: dict[str, Any] = json.loads(out)
        if result["connections"] == 0:
            raise BenchError(f"{self.variant.name}: no connection completed: {result['error']}")
        return result

    # -- figures -------------------------------------------------------------------------

    def warm_up(self) -> None:
        """A few connections first: caches, sessions and lazy set-up are not the figure."""
        self._cps_once(0.5, 2)

    def throughput(self, rep: int) -> None:
        host, port = self.variant.target(self.ctx, "iperf")
        seconds = self.plan.iperf_seconds
        for streams in (1, 4):
            before = self._cpu()
            out = self._client(
                ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-P", str(streams),
                 "-J"],
                seconds + 60,
            )  # fmt: skip
            moved = parse.iperf3(out)
            cpu = self._cpu() - before
            self.samples.add(f"throughput_{streams}_gbps", moved.gbps)
            gigabytes = moved.bytes / 1e9
            self.samples.add("cpu_s_per_gb", cpu / gigabytes if gigabytes else 0.0)
            self.progress(f"{streams} stream(s): {moved.gbps:.2f} Gbit/s, proxy CPU {cpu:.1f} s")

    def _ping_pong(self) -> parse.Latency:
        host, port = self.variant.target(self.ctx, "sockperf")
        seconds = self.plan.rtt_seconds
        out = self._client(
            ["sockperf", "ping-pong", "--tcp", "-i", host, "-p", str(port), "-m", "64",
             "-t", str(seconds), "--full-rtt"],
            seconds + 60,
        )  # fmt: skip
        return parse.sockperf(out)

    def rtt(self, rep: int) -> None:
        halted = cpuidle.halts()
        latency = self._ping_pong()
        halted = cpuidle.halts() - halted  # the whole machine's, sockperf's warm-up too
        self.samples.add("rtt_p50_us", latency.p50_us)
        self.samples.add("rtt_p99_us", latency.p99_us)
        self.samples.notes.setdefault("round_trips", []).append(latency.round_trips)
        self.samples.notes.setdefault("pings_sent", []).append(latency.sent)  # warm-up too
        if latency.sent:
            per_trip = round(halted / latency.sent, 3)
            self.samples.notes.setdefault("halts_per_round_trip", []).append(per_trip)
        self.progress(
            f"rtt p50 {latency.p50_us:.0f} µs, p99 {latency.p99_us:.0f} µs "
            f"({latency.round_trips} round trips)"
        )
        proxies = self.variant.proxy_cgroups(self.ctx)
        if self.plan.breakdown and proxies:
            self._breakdown(rep, proxies)

    def _breakdown(self, rep: int, proxies: list[Path]) -> None:
        """The same ping-pong once more, under perf: perf slows every round trip (by more
        than 100 µs on two busy vCPUs, docs/benchmarks.md), so the rtt figures are taken
        without it and this pass keeps its own p50 and p99 beside its CPU."""
        workdir = self.ctx.workdir / f"breakdown-{rep}"
        with breakdown.Recorder(proxies, self.ctx.cgroup_root, workdir) as recording:
            latency = self._ping_pong()
        found = recording.result(latency.round_trips)
        entry = {"p50_us": latency.p50_us, "p99_us": latency.p99_us, **found.as_dict()}
        self.samples.notes.setdefault("cpu_breakdown", []).append(entry)
        self.progress(
            f"under perf: rtt p50 {latency.p50_us:.0f} µs, CPU per round trip "
            f"{found.cpu_us:.0f} µs (kernel {found.parts_us['kernel']:.0f}), "
            f"{found.context_switches:.1f} context switches"
        )

    def cps(self, rep: int) -> None:
        result = self._cps_once(self.plan.cps_seconds, CPS_CONCURRENCY)
        rate = result["connections"] / result["seconds"]
        self.samples.add("cps", rate)
        errors = self.samples.notes.setdefault("cps_errors", [])
        errors.append(result["errors"])
        self.progress(f"{rate:.0f} connections/s ({result['errors']} failed)")

    def memory(self, rep: int) -> None:
        """Growth with *count* more idle connections while the earlier ones stay open.

        Holding on to the previous repetition's connections keeps each measurement honest:
        memory freed by closed connections would be reused without showing up as growth.
        """
        count = self.plan.idle_connections
        host, port = self.variant.target(self.ctx, "echo")
        time.sleep(0.5)  # let connections of the previous figure wind down
        before = self._rss()
        log = self.ctx.workdir / f"idle-{rep}.log"
        argv = [sys.executable, "-m", "smesh.bench.load", "idle", host, str(port), str(count)]
        holder = Started(self.ctx.lab, CLIENT_POD, argv, log)
        self.holders.append(holder)
        deadline = time.monotonic() + 120
        while '"open"' not in log.read_text(errors="replace"):
            if holder.proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip()[-400:]
                raise BenchError(f"{self.variant.name}: {count} idle connections failed: {tail}")
            time.sleep(0.1)
        time.sleep(0.5)  # buffers settle
        grown = self._rss() - before
        per_connection = max(grown, 0) / count
        self.samples.add("rss_kib_per_idle_conn", per_connection)
        self.progress(
            f"{count} more idle connections ({count * len(self.holders)} open): "
            f"{per_connection:.1f} KiB each (both proxies)"
        )
        if rep == self.plan.repetitions:
            self._release_holders()

    def _release_holders(self) -> None:
        for holder in self.holders:
            holder.stop()
        self.holders.clear()


# One client pod holds every repetition's idle connections to one server pod at once (3,000
# in a full run): capacity, not fairness, is measured, so that one peer may take the cap.
AGENT_SETTINGS = ("limits.maxStreamsPerPeer=4096",)


def _tune(ctx: Context) -> None:
    for name in ctx.topo.netns_names:
        for key, value in SYSCTLS.items():
            netns.write_sysctl(name, key, value)


def run_variant(plan: Plan, name: str, workdir: Path, progress: Progress) -> Samples:
    variant = build(name)
    lab = f"bench{secrets.token_hex(3)}"
    progress(f"building lab {lab} ({'mesh' if variant.mesh else 'no mesh'})")
    topo = api.up(lab, mesh=variant.mesh, agent_overrides=AGENT_SETTINGS if variant.mesh else ())
    try:
        ctx = Context(lab, topo, cgroups.v2_root(), workdir / name)
        ctx.workdir.mkdir(parents=True)
        _tune(ctx)
        measure = Measurement(plan, variant, ctx, progress)
        try:
            measure.start_servers()
            variant.start(ctx)
            weights = processes.cgroup_weights(variant.proxy_cgroups(ctx))
            measure.samples.notes["proxy_weight"] = weights
            measure.warm_up()
            for group in plan.groups:
                profilers = _profile(plan, variant, ctx, group)
                try:
                    for rep in range(1, plan.repetitions + 1):
                        progress(f"{group}, repetition {rep}/{plan.repetitions}")
                        getattr(measure, group)(rep)
                finally:
                    _stop_profilers(profilers)
        finally:
            measure.stop()
        if not variant.proxy_cgroups(ctx):  # no proxy: it costs no memory and no CPU
            for figure in ("rss_kib_per_idle_conn", "cpu_s_per_gb"):
                measure.samples.values[figure] = [0.0] if figure in measure.samples.values else []
        return measure.samples
    finally:
        api.down(lab)


PROFILED_GROUPS = ("throughput", "rtt", "cps")


def _profile(
    plan: Plan, variant: Variant, ctx: Context, group: str
) -> list[subprocess.Popen[bytes]]:
    """py-spy on every process of a Python proxy while *group* runs (one SVG each)."""
    python = variant.name == "smesh" or variant.name.startswith("model-")
    if plan.profile is None or group not in PROFILED_GROUPS or not python:
        return []
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    plan.profile.mkdir(parents=True, exist_ok=True)
    started = []
    for cgroup in variant.proxy_cgroups(ctx):
        for pid in (cgroup / "cgroup.procs").read_text().split():
            node = cgroup.parent.name
            out = plan.profile / f"{variant.name}-{group}-{node}-{pid}.svg"
            argv = [py_spy, "record", "--pid", pid, "--rate", "200", "--nonblocking",
                    "--output", str(out)]  # fmt: skip
            started.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
    return started


def _stop_profilers(profilers: list[subprocess.Popen[bytes]]) -> None:
    for proc in profilers:
        proc.send_signal(signal.SIGINT)  # py-spy writes its flame graph and exits
    for proc in profilers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _prefixed(progress: Progress, prefix: str) -> Progress:
    return lambda text: progress(f"{prefix} {text}")


def empty_document(plan: Plan) -> dict[str, Any]:
    """The results document before any variant ran (the machine, the date, the plan)."""
    return {
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "plan": {
            "repetitions": plan.repetitions,
            "iperf_seconds": plan.iperf_seconds,
            "rtt_seconds": plan.rtt_seconds,
            "cps_seconds": plan.cps_seconds,
            "cps_concurrency": CPS_CONCURRENCY,
            "idle_connections": plan.idle_connections,
            "proxy_nice": PROXY_NICE,  # each proxy's weight as measured: notes.*.proxy_weight
            "app_nice": os.getpriority(os.PRIO_PROCESS, 0),
        },
        "variants": {},
        "notes": {},
        "failed": {},
    }


def run(plan: Plan, progress: Progress) -> dict[str, Any]:
    """Measure every variant of *plan*; the document of the published JSON schema."""
    document = empty_document(plan)
    watch = conditions.Watch()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # proxies inherit: 1000s of fds
    workdir = Path(tempfile.mkdtemp(prefix="smesh-bench-"))
    ok = False
    try:
        for index, name in enumerate(plan.variants, 1):
            prefix = f"[{index}/{len(plan.variants)} {name}]"
            try:
                samples = run_variant(plan, name, workdir, _prefixed(progress, prefix))
            except BenchError as exc:  # the other variants still run; the report says why
                document["failed"][name] = str(exc)
                progress(f"{prefix} FAILED: {exc}")
                continue
            document["variants"][name] = samples.summary()
            document["notes"][name] = samples.notes
        document["targets"] = figures.targets_document(document["variants"])
        document["conditions"] = watch.document()
        ok = not document["failed"]
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):
                progress(f"logs of the failed run are kept in {workdir}")
    return document
