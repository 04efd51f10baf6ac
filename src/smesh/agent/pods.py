"""One meshed pod inside the agent: its certificate, its listeners, its capture.

The order matters and is the point of this module. A pod is captured only when both its
listeners exist, so no captured connect ever finds an empty port; its certificate is
fetched meanwhile, and a connection that comes before it waits for it (bounded by
``timeouts.certificateWait``, then refused: fail closed, since capture is in place);
a pod leaving the mesh is released capture-first, so the app falls back to plain
networking before its listeners close under it. A pod whose workload changes but stays
in the mesh keeps its capture and certificate while a new runtime replaces the old one.
A stopping agent closes the listeners but keeps capture (and the cached certificate):
the pod fails closed until the next agent serves it. A failed step is remembered and
retried by the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from smesh.agent import logs
from smesh.agent.workloads import Snapshot, Workload
from smesh.capture import NodeCapture
from smesh.errors import SmeshError

if TYPE_CHECKING:
    from smesh.agent.node import Agent

log = logging.getLogger("smesh.agent")

#: How often a pod whose certificate the signer did not give retries.
CERTIFICATE_RETRY = 2.0


class PodListeners(Protocol):
    """A pod's running data plane: outbound 127.0.0.1/::1:18000 and inbound podIP:18001."""

    def stop_accepting(self) -> None: ...

    def hand_over(self) -> None:
        """Another agent accepts on the listeners now: serve what is open until it ends."""
        ...

    def busy(self) -> bool:
        """Whether any connection, handshake or tunnel connection is still open."""
        ...

    def listening(self) -> list[tuple[str, socket.socket]]:
        """(``outbound`` or ``inbound``, listening socket) each."""
        ...

    def active_connections(self) -> int: ...

    def connections(self) -> list[dict[str, Any]]: ...

    async def close(self) -> None: ...


class PodWiring(Protocol):
    """The node-wide services a pod needs: identity, data plane, policy."""

    async def start(self, agent: Agent) -> None: ...

    async def stop(self) -> None: ...

    def reload(self) -> None: ...

    def workloads_changed(self, snapshot: Snapshot) -> None: ...

    async def issue(self, workload: Workload) -> float:
        """Make sure *workload* has a certificate; return its expiry (Unix time)."""
        ...

    def release(self, workload: Workload) -> None:
        """*workload* left the mesh: drop its use of its certificate (and cached copy)."""
        ...

    def forget_others(self, keep: list[Workload]) -> None:
        """Forget what is kept for pods other than *keep* (they left while no agent ran)."""
        ...

    async def listen(self, workload: Workload) -> PodListeners: ...


class PodRuntime:
    def __init__(self, workload: Workload, wiring: PodWiring) -> None:
        self.workload = workload
        self.wiring = wiring
        self.stage = "listeners"
        self.error: str | None = None
        self.expires: float | None = None
        self.listeners: PodListeners | None = None
        self.issued = False  # holds a use of its identity's certificate
        self.certificate_error: str | None = None
        self.captured = False
        self.since = time.time()
        self._certifying: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    @property
    def ready(self) -> bool:
        """Enrolled: captured with its listeners open (its certificate may still come)."""
        return self.stage == "ready"

    @property
    def serving(self) -> bool:
        """Enrolled and holding its certificate: its connections need not wait."""
        return self.ready and self.issued

    def after_certificate(self, callback: Callable[[], None]) -> None:
        """Call *callback* once this runtime holds its certificate use or has given up
        trying (stopped); at once if it is not waiting for one."""
        task = self._certifying
        if task is None or task.done():
            callback()
        else:
            task.add_done_callback(lambda _task: callback())

    async def start(self, capture: NodeCapture) -> None:
        """Run the remaining steps; on failure remember why (the agent retries).

        The certificate is fetched beside the other steps, not before them: the signer's
        round trip (tens of milliseconds, or an outage) would otherwise hold up the CNI
        ADD. Capture is what keeps the pod from leaking, and it is in place before the
        pod's apps start; connections that come before the certificate wait for it
        (``timeouts.certificateWait``) and are refused after that, never let out plain.
        """
        w = self.workload
        if not self.issued and self._certifying is None and self.stage != "stopped":
            self._certifying = asyncio.create_task(self._certify(), name=f"certificate {w.key}")
        took: dict[str, float] = {}  # where a start's time goes, for the log line
        try:
            if self.stage == "listeners":
                started = time.monotonic()
                listeners = await self.wiring.listen(w)
                took["listen_ms"] = round((time.monotonic() - started) * 1000, 1)
                if self.stage == "stopped":
                    await listeners.close()
                    return
                self.listeners, self.stage = listeners, "capture"
            if self.stage == "capture":
                netns, cgroup = w.sandbox()
                started = time.monotonic()
                capture.add_pod(w.key, w.name, cgroup, netns, ipv4=w.ipv4, ipv6=w.ipv6)
                took["capture_ms"] = round((time.monotonic() - started) * 1000, 1)
                self.captured = True
                self.stage = "ready"
        except SmeshError as exc:
            self._failed(str(exc))
            return
        except Exception as exc:  # a bug or an unforeseen OS error: this pod only, retried
            if self.error != repr(exc):
                log.exception(
                    "cannot mesh pod at step %s", self.stage, extra=logs.fields(pod=w.key)
                )
            self.error = repr(exc)
            return
        self.error = None
        log.info("pod meshed", extra=logs.fields(pod=w.key, ips=[str(ip) for ip in w.ips], **took))

    async def _certify(self) -> None:
        """Take a use of the pod's certificate, retrying until it comes or the pod goes.

        Never cancelled: a use taken while cancelling would never be given back.
        """
        # One turn of the loop first. A pod's start does not yield, so the start that made
        # this task has reported by now and its CNI ADD's reply is queued: it goes before
        # the first certificate of an identity, whose key and CSR are made on the loop
        # (under a burst of pod starts that took 10 to 80 ms, on the first pod of each node).
        await asyncio.sleep(0)
        w = self.workload
        while self.stage != "stopped":
            try:
                expires = await self.wiring.issue(w)
            except Exception as exc:  # the signer refused or is away, or a bug: retried
                why = str(exc) if isinstance(exc, SmeshError) else repr(exc)
                if self.certificate_error != why:
                    log.error(
                        "no certificate for the pod yet (its connections wait up to "
                        "timeouts.certificateWait, then are refused): %s; retrying every %gs",
                        why,
                        CERTIFICATE_RETRY,
                        extra=logs.fields(pod=w.key),
                        exc_info=not isinstance(exc, SmeshError),
                    )
                self.certificate_error = why
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), CERTIFICATE_RETRY)
                continue
            if self.stage == "stopped":  # the pod went while its certificate came
                self.wiring.release(w)
                return
            self.expires, self.issued, self.certificate_error = expires, True, None
            return

    def _failed(self, why: str) -> None:
        if self.error != why:
            log.error(
                "cannot mesh pod at step %s: %s",
                self.stage,
                why,
                extra=logs.fields(pod=self.workload.key),
            )
        self.error = why

    def stop_accepting(self) -> None:
        if self.listeners is not None:
            self.listeners.stop_accepting()

    def active_connections(self) -> int:
        return self.listeners.active_connections() if self.listeners is not None else 0

    def listening(self) -> list[tuple[str, socket.socket]]:
        return self.listeners.listening() if self.listeners is not None else []

    def hand_over(self) -> None:
        """A new agent took the node over (it holds the listening sockets and capture):
        serve the open connections on; certificate and capture are the new agent's."""
        if self.listeners is not None:
            self.listeners.hand_over()

    def busy(self) -> bool:
        return self.listeners.busy() if self.listeners is not None else False

    def connections(self) -> list[dict[str, Any]]:
        return self.listeners.connections() if self.listeners is not None else []

    async def stop(self, capture: NodeCapture) -> None:
        """The pod leaves the mesh: release capture first, then close the listeners and
        their connections, then give up its certificate.

        Capture is released even if this runtime never added it: an earlier agent may
        have, and a pod that left the mesh must not keep connecting to a port nobody
        listens on (the pod may still wait for its certificate here, the signer away).
        """
        try:
            capture.remove_pod(self.workload.key)
        except SmeshError as exc:
            log.error("cannot release capture: %s", exc, extra=logs.fields(pod=self.workload.key))
        self.captured = False
        await self.shutdown()
        self.release_certificate()

    async def replaced(self) -> None:
        """The pod stays in the mesh but its workload changed (same key, e.g. new IPs): a
        new runtime takes over. Close the listeners, whose ports the new runtime binds, and
        keep capture, so the pod's connects are refused meanwhile, never let out in plain
        text. The certificate use stays too: :meth:`release_certificate` gives it up once
        the new runtime took its own, so neither the credential nor its cached copy goes
        while the pod still needs it (with the signer away, nothing would replace them).
        """
        await self.shutdown()

    def release_certificate(self) -> None:
        """Give up this runtime's use of its certificate (the last use takes the cached copy)."""
        if self.issued:
            self.wiring.release(self.workload)
            self.issued = False

    async def shutdown(self) -> None:
        """The agent stops: close the listeners and their connections, keep capture.

        The pod's connects are refused from now on (captured, nothing listens) until the
        next agent takes the pinned capture over, with the certificate still cached.
        """
        if self.listeners is not None:
            await self.listeners.close()
            self.listeners = None
        self.stage = "stopped"  # a start still under way undoes what it finishes
        self._stopped.set()

    def describe(self) -> dict[str, Any]:
        w = self.workload
        return {
            "pod": w.key,
            "name": w.name,
            "identity": f"ns/{w.namespace}/sa/{w.service_account}",
            "ips": [str(ip) for ip in w.ips],
            "uid": w.uid,
            "netns": w.netns,
            "cgroup": str(w.cgroup) if w.cgroup is not None else None,
            "stage": self.stage,
            "error": self.error,
            "certificate": "issued" if self.issued else "pending",
            "certificate_error": self.certificate_error,
            "certificate_expires": self.expires,
            "active_connections": self.active_connections(),
        }
