"""The node agent's lifecycle: own the node's capture, mesh each pod, answer the admin API.

The agent is a reconciler: every workload snapshot says which pods of this node should be
meshed, and the agent starts or stops :class:`~smesh.agent.pods.PodRuntime`s until what
runs matches. A pod is captured only after its listeners are in place (its certificate
follows; connections wait for it), and released (capture first) before its listeners
close. A pod whose workload changes
but stays meshed is not released: its new runtime inherits capture, and takes its
certificate use before the old runtime gives its own up, so a signer outage cannot turn
the change into plain text or cost the pod its cached certificate.

Stopping: SIGTERM (or SIGINT) stops accepting, drains open connections up to
``timeouts.drain``, closes the listeners and exits 0, leaving capture pinned — exactly
what a crash or SIGKILL leaves: captured connects are refused while nothing listens on
18000, so the mesh fails closed, never open, planned stop or not. A restarted agent
takes the pinned capture over. Only a pod leaving the mesh, ``smesh capture detach`` or
``smesh lab down`` removes capture; stopping an agent never does, since a restart would
otherwise let the pods' connects out in plain text until the new agent captures again.

Handing over (an upgrade or a planned restart; :mod:`smesh.agent.handover`): a new agent
started while this one runs takes its listening sockets, and this one stops accepting,
releases capture to it and serves its open connections until they end on their own
(``timeouts.handoverDrain`` caps it if set), then exits 0: nothing is refused or cut. A
SIGTERM then changes nothing (a kubelet deleting the old pod of a DaemonSet update sends it
right after the hand-over; its SIGKILL at terminationGracePeriodSeconds is the bound); a
SIGINT gives what is open ``timeouts.drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from smesh.agent import collector, handover, logs, looplag
from smesh.agent.admin import (
    AdminServer,
    ConnectionCap,
    Response,
    WithRequest,
    config_view,
    split_routes,
)
from smesh.agent.config import AgentConfig
from smesh.agent.flowlog import FlowCollector, FlowLog
from smesh.agent.metrics import AgentMetrics
from smesh.agent.pods import PodRuntime, PodWiring
from smesh.agent.workloads import Registry, Snapshot, Workload, WorkloadSource
from smesh.capture import CaptureConfig, NodeCapture, abi, select_mode
from smesh.capture.backends import node_capture
from smesh.errors import SmeshError
from smesh.linux import cgroups

log = logging.getLogger("smesh.agent")

RETRY_INTERVAL = 2.0
COUNTER_INTERVAL = 2.0
ADMIN_LISTENERS = ("scrape", "debug")  # in admin.split_routes's order


class AgentError(SmeshError):
    """The agent cannot start."""


def linger_cut(
    now: float, started: float, handover_drain: float, interrupted: float | None, drain: float
) -> str | None:
    """Whether a handed-over agent stops serving what is still open, and by which setting.

    ``timeouts.handoverDrain`` (0: none) counts from the hand-over; a SIGINT (at
    *interrupted*) gives ``timeouts.drain`` from its arrival. Nothing else ends a linger
    but the connections ending: a SIGTERM is what a kubelet sends the old pod of a
    DaemonSet update right after the hand-over, and cutting then would cut every
    long-lived connection at each upgrade; its SIGKILL after the pod's
    terminationGracePeriodSeconds is that bound.
    """
    if handover_drain and now - started >= handover_drain:
        return "timeouts.handoverDrain"
    if interrupted is not None and now - interrupted >= drain:
        return "SIGINT: timeouts.drain"
    return None


PLAINTEXT_REFUSED = abi.Counter.PLAINTEXT_REFUSED.name.lower()  # a PodCounters field


def capture_config(config: AgentConfig) -> CaptureConfig:
    return CaptureConfig.build(
        mesh_cidrs=list(config.capture.mesh_cidrs),
        excluded_ports=[*config.capture.excluded_ports, *config.admin.ports],
        listener_port=config.ports.outbound,
        tunnel_port=config.ports.inbound,
        refuse_inbound_plaintext=config.capture.inbound_plaintext == "refuse",
        plaintext_ports=config.capture.plaintext_ports,
    )


class Agent:
    def __init__(
        self, config: AgentConfig, wiring: PodWiring, source: WorkloadSource | None = None
    ) -> None:
        self.config = config
        self.wiring = wiring
        self.metrics = AgentMetrics()
        self.metrics.ready.set_function(lambda: float(self.ready()))
        if source is None:
            from smesh.agent.wiring import workload_source  # noqa: PLC0415

            source = workload_source(config, self.metrics)
        self.source = source
        self.registry = Registry()
        self.pods: dict[str, PodRuntime] = {}
        self.capture: NodeCapture | None = None
        self.capture_mode = ""
        self.started = time.time()
        self._stopping = asyncio.Event()
        self._desired: dict[str, Workload] = {}
        self._synced = False
        self._unreconciled: Snapshot | None = None  # a snapshot whose reconcile failed
        self._reported: tuple[dict[str, Workload], dict[str, tuple[Workload, str]]] | None = None
        # Pods bound to this node whose sandbox has not come yet: their certificate, fetched
        # early so the CNI ADD does not wait for the signer (see _fetch_early).
        self._early: dict[str, asyncio.Task[Workload | None]] = {}
        self.broken: str | None = None  # why a task the agent lives on has ended
        # Hand-over: the listening sockets a previous agent passed (taken as pods start),
        # this agent's own server for the next one, and whether it handed over itself.
        self.inherited: dict[handover.SocketKey, socket.socket] = {}
        self._handover: handover.HandoverServer | None = None
        self.handed_over = False
        self._interrupted: float | None = None  # when a SIGINT came: it caps a linger
        self._tasks: list[asyncio.Task[None]] = []
        admin = config.admin
        self.flows = FlowLog(
            config.node,
            admin.flow_buffer,
            admin.flow_follower_queue,
            admin.flow_followers,
            self.registry.lookup,
        )
        self.metrics.registry.register(FlowCollector(self.flows))
        # /debug/* on the debug listener (the node's loopback), the rest on the scrape
        # listener (the node's addresses): admin.split_routes, by the path's prefix.
        routes = split_routes(
            {
                "/healthz": self._healthz,
                "/ready": self._ready,
                "/metrics": self._metrics,
                "/debug/workloads": self._debug_workloads,
                "/debug/connections": self._debug_connections,
                "/debug/flows": WithRequest(self.flows.serve),
                "/debug/policy": self._debug_policy,
                "/debug/config": self._debug_config,
            }
        )
        self._admins = {  # a cap each (see AdminSettings)
            name: AdminServer(table, self._admin_cap(name))
            for name, table in zip(ADMIN_LISTENERS, routes, strict=True)
        }

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._prepare_ready_file()
        timer = collector.CollectorTimer(self.metrics)
        timer.install()
        lag = self._lag_probe(loop)
        path = self.config.handover_path
        incoming = handover.receive(path)  # a running agent's listeners, if one runs
        if incoming is None:
            self._open_capture()
            await self.wiring.start(self)
        else:
            await self._take_over(incoming)
        await self._start_admin()
        inherit = getattr(self.source, "inherit", None)  # the CNI hand-off's socket
        if inherit is not None:
            inherit(lambda kind, address: self.take_inherited(handover.NODE, kind, address))
        self._handover = handover.HandoverServer(
            path,
            self._listening,
            self._hand_over,
            lambda result: self.metrics.handovers.labels(result).inc(),
        )
        if incoming is not None:
            self.metrics.handovers.labels("taken").inc()
        try:
            self._handover.start(self.take_inherited(handover.NODE, "handover", str(path)))
        except OSError as exc:  # serving matters more; the next agent will stop this one
            log.error(
                "cannot serve the hand-over at %s (handoverSocket): %s; a new agent will "
                "not be able to take this node over while this one runs",
                path,
                exc,
            )
        log.info(
            "agent started",
            extra=logs.fields(
                node=self.config.node,
                capture=self.capture_mode,
                scrape=self._admin_address("scrape"),
                debug=self._admin_address("debug"),
                handed_over_by=incoming.pid if incoming is not None else None,
            ),
        )
        self._write_ready_file()
        self._tasks = [
            asyncio.create_task(self._watch(), name="workloads"),
            asyncio.create_task(self._retry_failed(), name="retry"),
            asyncio.create_task(self._export_counters(), name="counters"),
        ]
        for task in self._tasks:
            self.depends_on(task)
        try:
            await self._stopping.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)  # logged when they ended
            if not self.handed_over and self._handover is not None:
                await self._handover.settle()  # a hand-over under way decides: linger or stop
            if self.handed_over:
                await self._linger()
            else:
                await self._shutdown()
            timer.remove()
            if lag is not None:
                lag.stop()
        return 0

    def _lag_probe(self, loop: asyncio.AbstractEventLoop) -> looplag.LagProbe | None:
        """The event loop's lag, sampled into the metrics from now on (loopLagInterval)."""
        if not self.config.loop_lag_interval:
            return None
        probe = looplag.LagProbe(loop, self.config.loop_lag_interval, self.metrics.loop_lag.observe)
        probe.start()
        return probe

    def _signalled(self, sig: signal.Signals) -> None:
        if sig == signal.SIGINT and self._interrupted is None:
            self._interrupted = time.monotonic()
        if self.handed_over:
            log.info(
                "%s after the hand-over: %s",
                sig.name,
                "open connections get timeouts.drain"
                if sig == signal.SIGINT
                else "serving the open connections until they end (a SIGKILL, e.g. at the "
                "pod's terminationGracePeriodSeconds, or a SIGINT ends them sooner)",
                extra=logs.fields(connections=self._open_connections()),
            )
            return
        self._remove_ready_file()
        self._stopping.set()

    # -- the ready file (admin.readyFile) -------------------------------------------------

    def _prepare_ready_file(self) -> None:
        """A stale file (a crashed agent's, in the same pod) goes before anything else."""
        path = self.config.admin.ready_file
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise AgentError(
                f"admin.readyFile: cannot prepare {path}: {exc.strerror or exc}; "
                "name a writable directory (the chart: the agent's /tmp)"
            ) from exc

    def _write_ready_file(self) -> None:
        path = self.config.admin.ready_file
        if path is None or self.broken is not None:
            return
        try:
            path.write_text(f"{os.getpid()}\n")
        except OSError as exc:  # serving matters more; the probe will say so
            log.error(
                "cannot write admin.readyFile %s: %s; this agent never looks ready", path, exc
            )

    def _remove_ready_file(self) -> None:
        path = self.config.admin.ready_file
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def _admin_cap(self, name: str) -> ConnectionCap:
        admin = self.config.admin
        return ConnectionCap(
            admin.max_connections,
            admin.read_timeout,
            lambda reason: self.metrics.admin_refused.labels(name, reason).inc(),
        )

    def _admin_listener(self, name: str) -> tuple[str, int]:
        listener = self.config.admin.scrape if name == "scrape" else self.config.admin.debug
        return listener.address, listener.port

    def _admin_address(self, name: str) -> str:
        return handover.address(*self._admin_listener(name))

    async def _start_admin(self) -> None:
        """Serve both admin listeners: on the sockets the previous agent passed (so a probe
        or a scrape during a hand-over is queued, never refused), else newly bound."""
        adopted = {
            name: self.take_inherited(handover.NODE, "admin", self._admin_address(name))
            for name in self._admins
        }
        # Passed admin sockets of another layout (an agent before the split, on 0.0.0.0:15000,
        # or another admin.*.address): closed first, as they would hold the port we bind.
        for key in [k for k in self.inherited if (k.pod, k.kind) == (handover.NODE, "admin")]:
            log.info(
                "closing a passed admin listener this agent does not serve at",
                extra=logs.fields(socket=str(key)),
            )
            self.inherited.pop(key).close()
        for name, server in self._admins.items():
            sock = adopted[name]
            if sock is not None:
                await server.adopt(sock)
            else:
                await server.start(*self._admin_listener(name))
        debug = self.config.admin.debug.address
        if not ipaddress.ip_address(debug).is_loopback:
            log.warning(
                "admin.debug.address %s is not a loopback address: whoever reaches it (every "
                "pod of the node, on the node's addresses) reads the node's workloads, "
                "identities and connections; 127.0.0.1 keeps them to the node",
                debug,
            )

    def take_inherited(self, pod: str, kind: str, address: str) -> socket.socket | None:
        """A listening socket the previous agent passed for *pod*'s *kind* at *address*."""
        return self.inherited.pop(handover.SocketKey(pod, kind, address), None)

    async def _take_over(self, incoming: handover.Incoming) -> None:
        """Set up what serving needs, then let the previous agent go and take capture.

        Until the ack the previous agent serves on unchanged, so a failure here changes
        nothing for the apps; after it, connections wait in the passed sockets' backlogs
        (none is refused) until this agent's reconcile serves each pod.
        """
        self.inherited = incoming.sockets
        try:
            await self.wiring.start(self)
        except BaseException as exc:
            incoming.refuse(f"the new agent cannot start: {exc}")
            raise
        await asyncio.to_thread(incoming.acknowledge, os.getpid())
        self._open_capture(wait=handover.STEP_TIMEOUT)

    def _listening(self) -> list[tuple[handover.SocketKey, socket.socket]]:
        """Every listening socket of this agent, for a new one to take over."""
        found: list[tuple[handover.SocketKey, socket.socket]] = []
        for key, pod in self.pods.items():
            for kind, sock in pod.listening():
                found.append((handover.SocketKey(key, kind, handover.address_of(sock)), sock))
        for server in self._admins.values():  # both: "admin" keys told apart by address
            for sock in server.sockets():
                found.append(
                    (handover.SocketKey(handover.NODE, "admin", handover.address_of(sock)), sock)
                )
        for kind, sock in getattr(self.source, "listening", list)():
            found.append((handover.SocketKey(handover.NODE, kind, handover.address_of(sock)), sock))
        if self._handover is not None and self._handover.sock is not None:
            sock = self._handover.sock
            found.append(
                (handover.SocketKey(handover.NODE, "handover", handover.address_of(sock)), sock)
            )
        return found

    def _hand_over(self, pid: int) -> None:
        """The new agent (*pid*) acknowledged: it holds every listening socket now. Stop
        accepting (retiring the tunnel connections), release capture, keep serving what
        is open; ``run`` then lingers until it all ended."""
        self.handed_over = True
        for task in self._tasks:
            task.cancel()  # no more reconciles: the pods are the new agent's
        for early in self._early.values():
            early.cancel()
        for server in self._admins.values():
            server.stop_listening()
        hand_over_source = getattr(self.source, "hand_over", None)
        if hand_over_source is not None:
            hand_over_source()
        for pod in self.pods.values():
            pod.hand_over()
        if self.capture is not None:
            self.capture.close()  # the pinned links stay attached; the new agent takes them
        log.info(
            "handed the node over; serving the open connections until they end",
            extra=logs.fields(new_pid=pid, connections=self._open_connections()),
        )
        self._stopping.set()

    def _open_connections(self) -> int:
        return sum(p.active_connections() for p in self.pods.values())

    async def _linger(self) -> None:
        """After a hand-over: serve until the last connection (and tunnel) ended, or the
        cap (``timeouts.handoverDrain``; after a SIGINT, ``timeouts.drain``). A SIGTERM
        does not cap it: its sender's SIGKILL does (the pod's grace period)."""
        started = time.monotonic()
        while any(p.busy() for p in self.pods.values()):
            why = linger_cut(
                time.monotonic(),
                started,
                self.config.timeouts.handover_drain,
                self._interrupted,
                self.config.timeouts.drain,
            )
            if why is not None:
                log.warning("%s reached after the hand-over: closing what is still open", why)
                break
            await asyncio.sleep(0.1)
        for key in list(self.pods):
            await self.pods.pop(key).shutdown()
        await self.wiring.stop()
        self.flows.close()
        for server in self._admins.values():
            await server.close()
        if self._handover is not None:
            self._handover.close()
        self._remove_ready_file()
        log.info("agent exited after its hand-over", extra=logs.fields(capture="the new agent's"))

    def depends_on(self, task: asyncio.Task[None]) -> None:
        """*task* must run as long as the agent does (the watch, the renewals)."""
        task.add_done_callback(self._task_ended)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A task the agent lives on ended: /healthz fails, so the agent gets restarted."""
        if task.cancelled():
            return
        self.broken = f"task {task.get_name()!r} ended: {task.exception()!r}"
        self._remove_ready_file()
        log.critical("%s; /healthz fails from now on", self.broken, exc_info=task.exception())

    def _open_capture(self, wait: float = 0.0) -> None:
        """Own the node's capture; *wait*: for a previous agent to let go of it."""
        choice = select_mode(self.config.capture.mode)
        pin_dir = self.config.capture.pin_dir or Path("/sys/fs/bpf/smesh") / self.config.node
        capture = node_capture(choice.mode, pin_dir, capture_config(self.config))
        deadline = time.monotonic() + wait
        while True:
            try:
                capture.open()
                break
            except SmeshError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)
        own = cgroups.v2_root() / cgroups.of_pid().lstrip("/")
        capture.attach_proxy(own)
        self.capture, self.capture_mode = capture, choice.mode
        log.info("capture mode %s: %s", choice.mode, choice.reason)

    async def _shutdown(self) -> None:
        self._remove_ready_file()
        log.info(
            "stopping: draining connections",
            extra=logs.fields(deadline_s=self.config.timeouts.drain),
        )
        if self._handover is not None:
            self._handover.close()
        self.flows.close()
        for server in self._admins.values():
            await server.close()
        for task in self._early.values():
            task.cancel()
        for pod in self.pods.values():
            pod.stop_accepting()
        deadline = time.monotonic() + self.config.timeouts.drain
        while time.monotonic() < deadline and any(
            p.active_connections() for p in self.pods.values()
        ):
            await asyncio.sleep(0.05)
        left = sum(p.active_connections() for p in self.pods.values())
        if left:
            log.warning("drain deadline reached; closing %d connections", left)
        assert self.capture is not None
        for key in list(self.pods):
            await self.pods.pop(key).shutdown()
        self.capture.close()  # the pinned links stay: captured connects are refused
        await self.wiring.stop()
        log.info("agent stopped", extra=logs.fields(capture="kept for the next agent"))

    def reload(self) -> None:
        """SIGHUP: reload what can change live (authorization policy)."""
        self.wiring.reload()

    # -- reconcile -------------------------------------------------------------------

    async def _watch(self) -> None:
        async for snapshot in self.source.watch():
            await self._reconcile_or_retry(snapshot)

    async def _reconcile_or_retry(self, snapshot: Snapshot) -> None:
        """A failed reconcile is retried with its snapshot, which may not change again."""
        self._unreconciled = None
        try:
            await self.reconcile(snapshot)
        except Exception:
            log.exception("reconciling the workloads failed; retrying in %gs", RETRY_INTERVAL)
            self._unreconciled = snapshot
        self._report()

    def _report(self) -> None:
        """Tell the source which pods are meshed and which failed (CNI ADDs wait on it)."""
        meshed = {k: p.workload for k, p in self.pods.items() if p.ready}
        failed = {k: (p.workload, p.error) for k, p in self.pods.items() if p.error is not None}
        if (meshed, failed) == self._reported:
            return  # each pod's start reports, and so does the end of a reconcile
        self._reported = (meshed, failed)
        try:
            self.source.reconciled(meshed, failed)
        except Exception:  # a source's bug must not stop the reconciler
            log.exception("the workload source failed to take the reconcile result")

    async def reconcile(self, snapshot: Snapshot) -> None:
        self.registry.update(snapshot)
        self.wiring.workloads_changed(snapshot)
        # A pod of this node whose sandbox the source does not know yet (a Kubernetes pod
        # before its CNI ADD) cannot be captured: there is no cgroup or netns to act on.
        on_node = snapshot.on_node(self.config.node)
        self._desired = {k: w for k, w in on_node.items() if w.meshed and w.has_sandbox}
        waiting = {k: w for k, w in on_node.items() if w.meshed and not w.has_sandbox}
        self._fetch_early(waiting)
        assert self.capture is not None
        replaced: list[PodRuntime] = []
        for key in list(self.pods):
            if self._desired.get(key) == self.pods[key].workload:
                continue
            pod = self.pods.pop(key)
            if key in self._desired:  # still meshed: capture and certificate stay
                log.info("replacing pod: its workload changed", extra=logs.fields(pod=key))
                await pod.replaced()
                replaced.append(pod)
            else:
                log.info("releasing pod", extra=logs.fields(pod=key))
                await pod.stop(self.capture)
        desired = self._desired
        try:
            for key, workload in desired.items():  # one by one: see _start
                # (a reconcile begun meanwhile, a retry's, decides for the pods it changed)
                if key not in self.pods and self._desired.get(key) is workload:
                    await self._start(workload)
        finally:  # the new runtimes take their certificate uses first
            for pod in replaced:
                self._after_certificate(pod.workload.key, pod.release_certificate)
            self._drop_early(keep=waiting)
        if not self._synced:
            self._release_leftovers()
            self.wiring.forget_others(list(self._desired.values()))
            self._close_unclaimed()
            # After this reconcile's report (CNI ADDs may wait on it): a one-off pause.
            asyncio.get_running_loop().call_soon(
                lambda: self.metrics.gc_frozen.set(collector.freeze_long_lived())
            )
        self._synced = True
        self.metrics.workloads.labels("ready").set(sum(p.ready for p in self.pods.values()))
        self.metrics.workloads.labels("pending").set(
            len(self._desired) - sum(p.ready for p in self.pods.values())
        )

    def _close_unclaimed(self) -> None:
        """Passed listeners of pods no longer meshed here: nobody will serve them."""
        for key in [k for k in self.inherited if k.pod not in self._desired]:
            log.info("closing a passed listener no pod claims", extra=logs.fields(socket=str(key)))
            self.inherited.pop(key).close()

    def _release_leftovers(self) -> None:
        """Pods an earlier agent captured that left the mesh while no agent ran: their
        connects would go on to a port nobody listens on."""
        assert self.capture is not None
        for captured in self.capture.pods():
            if captured.pod_id in self._desired:
                continue
            log.info(
                "releasing pod captured by an earlier agent", extra=logs.fields(pod=captured.pod_id)
            )
            try:
                self.capture.remove_pod(captured.pod_id)
            except SmeshError as exc:
                log.error("cannot release capture: %s", exc, extra=logs.fields(pod=captured.pod_id))

    def _fetch_early(self, waiting: dict[str, Workload]) -> None:
        """Fetch the certificate of a pod as soon as it is bound to this node.

        The container runtime spends a few hundred milliseconds on a sandbox before its CNI
        ADD reaches the agent; a certificate asked for then, not at the ADD, keeps the
        signer's round trip off the pod's start path. The early use is given up once the
        pod's own runtime holds the certificate, or the pod is gone.
        """
        for key, workload in waiting.items():
            if key not in self._early:
                self._early[key] = asyncio.create_task(
                    self._issue_early(workload), name=f"early-certificate {key}"
                )

    async def _issue_early(self, workload: Workload) -> Workload | None:
        try:
            await self.wiring.issue(workload)
        except Exception as exc:  # the pod's own start asks again, and reports
            log.debug("early certificate for %s not issued: %s", workload.key, exc)
            return None
        return workload

    def _drop_early(self, keep: dict[str, Workload]) -> None:
        for key in [k for k in self._early if k not in keep]:
            task = self._early.pop(key)
            # never cancelled: a use taken while cancelling would never be given back
            task.add_done_callback(self._release_early)

    def _release_early(self, task: asyncio.Task[Workload | None]) -> None:
        if not task.cancelled() and (workload := task.result()) is not None:
            self._after_certificate(workload.key, lambda: self.wiring.release(workload))

    def _after_certificate(self, key: str, release: Callable[[], None]) -> None:
        """Give up a use of a pod's certificate only once the pod's runtime holds its own
        (or failed to get one): the last use gone takes the credential and its cached copy,
        which the runtime, still waiting for the signer, would have to fetch again."""
        pod = self.pods.get(key)
        if pod is None:
            release()
        else:
            pod.after_certificate(release)

    async def _start(self, workload: Workload) -> None:
        assert self.capture is not None
        pod = PodRuntime(workload, self.wiring)
        self.pods[workload.key] = pod
        await pod.start(self.capture)
        # Its CNI ADD is answered now, not after every other pod of the snapshot started:
        # the report wakes the ADD's handler, and one turn of the loop lets it reply before
        # the next pod's start (listeners and capture are synchronous work, a few ms each,
        # tens under a burst of pod starts).
        self._report()
        await asyncio.sleep(0)

    async def _retry_failed(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL)
            assert self.capture is not None
            if self._unreconciled is not None:
                await self._reconcile_or_retry(self._unreconciled)
            retried = False
            for pod in list(self.pods.values()):
                if pod.error is not None and self.pods.get(pod.workload.key) is pod:
                    await pod.start(self.capture)
                    retried = True
            if retried:
                self._report()

    async def _export_counters(self) -> None:
        last: dict[tuple[str, str], int] = {}
        while True:
            await asyncio.sleep(COUNTER_INTERVAL)
            assert self.capture is not None
            for key, pod in list(self.pods.items()):
                if not pod.ready:
                    continue
                with contextlib.suppress(SmeshError):
                    counts = self.capture.counters(key).as_dict()
                    for decision, value in counts.items():
                        seen = last.get((key, decision), 0)
                        if value < seen:  # the pod was captured anew: its counters restarted
                            seen = 0
                        if value > seen:
                            workload = pod.workload
                            self.metrics.capture_events.labels(
                                workload.workload_label, workload.namespace, decision
                            ).inc(value - seen)
                            if decision == PLAINTEXT_REFUSED:
                                self.flows.refused_plaintext(key, value - seen)
                                log.warning(
                                    "refused %d plaintext connection attempt(s) to pod %s "
                                    "from outside the mesh (capture.inboundPlaintext: refuse)",
                                    value - seen,
                                    key,
                                    extra=logs.fields(pod=key, refused=value - seen),
                                )
                        last[(key, decision)] = value

    # -- admin -----------------------------------------------------------------------

    def ready(self) -> bool:
        """Every pod enrolled and holding its certificate (a CNI ADD waits for less)."""
        return self._synced and all(
            key in self.pods and self.pods[key].serving for key in self._desired
        )

    def _healthz(self) -> Response:
        if self.broken is not None:
            return Response(500, f"{self.broken}\n".encode())
        return Response(200, b"ok\n")

    def _ready(self) -> Response:
        if self.ready():
            return Response(200, b"ready\n")
        waiting = [k for k in self._desired if not (k in self.pods and self.pods[k].serving)]
        detail = "; ".join(f"{k}: {self._not_serving(k)}" for k in waiting)
        return Response(503, f"not ready: {detail or 'no workload snapshot yet'}\n".encode())

    def _not_serving(self, key: str) -> str:
        pod = self.pods.get(key)
        if pod is None:
            return "not started"
        if pod.error is not None or not pod.ready:
            return pod.error or pod.stage
        return pod.certificate_error or "waiting for its certificate"

    def _metrics(self) -> Response:
        return Response(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _debug_workloads(self) -> Response:
        doc: dict[str, Any] = {
            "node": self.config.node,
            "pid": os.getpid(),  # which agent answers (a hand-over's new one, once it did)
            "capture": self.capture_mode,
            "workloads": [pod.describe() for pod in self.pods.values()],
            # who answers at each destination address, as this node sees the cluster
            "registry": [
                {
                    "pod": w.key,
                    "node": w.node,
                    "ips": [str(ip) for ip in w.ips],
                    "meshed": w.meshed,
                    "serviceAccount": w.service_account,
                }
                for w in self.registry.workloads()
            ],
        }
        return Response(200, json.dumps(doc, indent=2).encode(), "application/json")

    def _debug_config(self) -> Response:
        doc = {"node": self.config.node, "pid": os.getpid(), "config": config_view(self.config)}
        return Response(200, json.dumps(doc, indent=2).encode(), "application/json")

    def _debug_connections(self) -> Response:
        doc = {"connections": [c for pod in self.pods.values() for c in pod.connections()]}
        return Response(200, json.dumps(doc, indent=2).encode(), "application/json")

    def _debug_policy(self) -> Response:
        """The policy in force, its digest, when it was loaded and the last refused reload
        (`smesh status`, `smesh policy explain`, `smesh lab policy`)."""
        describe: Callable[[], dict[str, Any]] | None = getattr(
            self.wiring, "describe_policy", None
        )
        if describe is None:
            return Response(404, b"this agent's wiring has no authorization policy\n")
        doc = {"node": self.config.node, **describe()}
        return Response(200, json.dumps(doc, indent=2).encode(), "application/json")
