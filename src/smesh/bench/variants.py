"""The contenders: what runs on the nodes for each variant, and where the app connects.

``direct`` and ``smesh`` let the client connect to the server pod's own address (smesh
captures it); a proxy pair (stunnel, haproxy, the model candidates) is addressed explicitly
on node-1, as a user of those tunnels would configure it. A variant's proxies live in known
cgroups, so their CPU and memory are read the same way for all.

Every proxy also gets the same CPU weight: the lab starts smesh's agents at
``smesh.lab.agents.AGENT_NICE`` in sessions of their own whose autogroups have that nice
value too, and each process of a pair starts the same way (PROXY_NICE), or a busy
machine's run queue would favour whichever ran at the higher weight. The apps (iperf3,
sockperf, the echo server and the load clients: smesh.bench.runner) stay in the bench's
own session at its nice value: they are the same for every variant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from smesh.bench import material, peers
from smesh.bench.processes import Started
from smesh.lab import agents
from smesh.lab.topology import Topology

SERVICES = (("iperf", 5201), ("sockperf", 11111), ("echo", 7000))
CLIENT_POD = "pod-1"
SERVER_POD = "pod-3"
NODES = ("node-1", "node-2")
PROXY_NICE = agents.AGENT_NICE


@dataclass
class Context:
    lab: str
    topo: Topology
    cgroup_root: Path
    workdir: Path

    @property
    def server_ip(self) -> str:
        return str(self.topo.pod(SERVER_POD).ip4)


@dataclass
class Variant:
    """No proxy at all: the app talks to the server pod directly (the physical limit)."""

    name: str = "direct"
    mesh: bool = False
    started: list[Started] = field(default_factory=list)

    def start(self, ctx: Context) -> None:
        pass

    def target(self, ctx: Context, service: str) -> tuple[str, int]:
        return ctx.server_ip, dict(SERVICES)[service]

    def proxy_cgroups(self, ctx: Context) -> list[Path]:
        return []

    def stop(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.started.clear()


@dataclass
class Smesh(Variant):
    """The lab with the mesh on: one agent per node, capture in the pods."""

    name: str = "smesh"
    mesh: bool = True

    def proxy_cgroups(self, ctx: Context) -> list[Path]:
        return [ctx.cgroup_root / ctx.topo.node(n).agent_cgroup for n in NODES]


@dataclass
class Pair(Variant):
    """A proxy on node-1 (client role) and one on node-2 (server role), TLS between them."""

    name: str = "pair"
    kind: str = "stunnel"  # stunnel, haproxy or model
    model: peers.Model | None = None

    def _hops(self, ctx: Context) -> list[peers.Hop]:
        node1, node2 = (ctx.topo.node(n) for n in NODES)
        return peers.hops(SERVICES, str(node1.gateway4), str(node2.ip4), ctx.server_ip)

    def start(self, ctx: Context) -> None:
        ca, files = material.write(ctx.workdir / "tls", NODES)
        hops = self._hops(ctx)
        for node, role in zip(NODES, ("client", "server"), strict=True):
            ports = [(h.client_listen if role == "client" else h.tunnel)[1] for h in hops]
            log = ctx.workdir / f"{self.name}-{node}.log"
            if self.kind == "model":
                assert self.model is not None
                for hop, port in zip(hops, ports, strict=True):
                    argv = self.model.argv(sys.executable, role, hop, files[node], ca)
                    process = Started(ctx.lab, node, argv, log, nice=PROXY_NICE)
                    self.started.append(process)
                    process.wait_listening([port], timeout=20)
                continue
            config = ctx.workdir / f"{self.name}-{node}.conf"
            if self.kind == "stunnel":
                config.write_text(peers.stunnel_config(role, hops, files[node], ca))
                argv = ["stunnel", str(config)]
            else:
                config.write_text(peers.haproxy_config(role, hops, files[node], ca))
                argv = ["haproxy", "-db", "-f", str(config)]
            process = Started(ctx.lab, node, argv, log, nice=PROXY_NICE)
            self.started.append(process)
            process.wait_listening(ports)

    def target(self, ctx: Context, service: str) -> tuple[str, int]:
        hop = next(h for h in self._hops(ctx) if h.name == service)
        return hop.client_listen

    def proxy_cgroups(self, ctx: Context) -> list[Path]:
        return [ctx.cgroup_root / ctx.topo.node(n).host_cgroup for n in NODES]


def build(name: str) -> Variant:
    if name == "direct":
        return Variant()
    if name == "smesh":
        return Smesh()
    if name in ("stunnel", "haproxy"):
        return Pair(name=name, kind=name)
    model = next((m for m in peers.MODELS if m.variant == name), None)
    if model is None:
        raise KeyError(name)
    return Pair(name=name, kind="model", model=model)


def known() -> list[str]:
    return ["direct", "smesh", "stunnel", "haproxy", *(m.variant for m in peers.MODELS)]
