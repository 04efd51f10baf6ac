"""The agent's end of the CNI hand-off: pod sandboxes, as the CNI plugin reports them.

The container runtime creates a pod's sandbox (netns, cgroup), runs the network plugins,
then smesh's CNI plugin, which asks the agent here over a Unix socket to mesh the pod and
waits. The agent answers ADD only once the pod is meshed (capture attached, listeners open)
or once it has decided the pod is not meshed; anything else is a 5xx the plugin turns into
a failed ADD, so the pod does not start unmeshed: fail closed.

Each sandbox is also written to ``kubernetes.sandboxDir`` (one small JSON file per pod UID,
replaced atomically), so that a restarted agent re-meshes its running pods without waiting
for a CNI call that will never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smesh.errors import SmeshError
from smesh.httpserver import HttpServer, Request, Response
from smesh.kubernetes.handoff import (
    PATH_PREFIX,
    Command,
    HandoffError,
    SandboxReply,
    SandboxRequest,
    decode_request,
    encode,
)
from smesh.linux.files import write_atomic
from smesh.validation import IP, describe

log = logging.getLogger("smesh.agent")

#: A hand-off request is a few hundred bytes; anything near this is not one.
MAX_BODY = 64 * 1024
#: How long an ADD waits for the node's informer to see its pod (it was just bound).
POD_LOOKUP_WAIT = 5.0
#: How long a DEL waits for the agent to release the pod before answering anyway.
RELEASE_WAIT = 5.0
BAD_REQUEST_LOG_INTERVAL = 5.0


class SandboxError(SmeshError):
    """A sandbox record cannot be read or written."""


class SandboxRecord(BaseModel):
    """What the agent keeps of one pod sandbox: enough to mesh the pod again after a restart."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    uid: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[0-9a-fA-F-]+$")]
    namespace: str
    name: str
    container_id: Annotated[str, Field(alias="containerId")] = ""
    netns: Annotated[str, Field(min_length=1)]
    cgroup: Path
    ips: tuple[IP, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class RecordStore:
    """One JSON file per pod UID in a 0700 directory; every write is a rename."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, uid: str) -> Path:
        return self.directory / f"{uid}.json"

    def load(self) -> dict[str, SandboxRecord]:
        """Every readable record, by UID; an unreadable one is logged and removed."""
        records: dict[str, SandboxRecord] = {}
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError as exc:
            raise SandboxError(
                f"cannot read the sandbox records in {self.directory}: {exc}"
            ) from exc
        for path in paths:
            try:
                record = SandboxRecord.model_validate_json(path.read_bytes())
            except (OSError, ValidationError) as exc:
                why = describe(exc) if isinstance(exc, ValidationError) else str(exc)
                log.error("removing unreadable sandbox record %s: %s", path, why)
                path.unlink(missing_ok=True)
                continue
            if path.name != f"{record.uid}.json":
                log.error("removing sandbox record %s: it names pod UID %s", path, record.uid)
                path.unlink(missing_ok=True)
                continue
            records[record.uid] = record
        return records

    def put(self, record: SandboxRecord) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomic(self._path(record.uid), record.model_dump_json(by_alias=True).encode())
        except OSError as exc:
            raise SandboxError(
                f"cannot record the sandbox of {record.key} in {self.directory}: {exc}"
            ) from exc

    def remove(self, uid: str) -> None:
        try:
            self._path(uid).unlink(missing_ok=True)
        except OSError as exc:
            raise SandboxError(f"cannot remove the sandbox record of pod {uid}: {exc}") from exc


@dataclass(frozen=True)
class Outcome:
    """How an ADD ends: meshed, not meshed (with why), failed or timed out (with why)."""

    result: str  # "meshed" | "not_meshed" | "failed" | "timeout"
    message: str = ""


class SandboxHost(Protocol):
    """What the server needs of the workload source (smesh.kubernetes.source)."""

    async def admit(self, request: SandboxRequest, deadline: float) -> SandboxRecord:
        """Find the pod and its cgroup, record the sandbox; HandoffFailure if it cannot."""
        ...

    async def enrolment(self, record: SandboxRecord, deadline: float) -> Outcome: ...

    async def release(self, request: SandboxRequest, deadline: float) -> str:
        """Forget the sandbox (idempotent); the pod key released, or "" if none was known."""
        ...

    def check(self, request: SandboxRequest) -> Outcome: ...


class BadRequest(SmeshError):
    """A request the plugin should not have sent: 400, the field named."""


class HandoffFailure(SmeshError):
    """The pod cannot be meshed now: 5xx, and the pod does not start."""


Observe = Callable[[str, str, float | None], None]  # command, result, enrol seconds


class SandboxServer:
    """HTTP/1.1 on the Unix socket ``kubernetes.cniSocket`` (0600, in a 0700 directory)."""

    def __init__(
        self,
        host: SandboxHost,
        path: Path,
        enrol_timeout: float,
        observe: Observe = lambda command, result, seconds: None,
    ) -> None:
        self.host = host
        self.path = path
        self.enrol_timeout = enrol_timeout
        self.observe = observe
        self._server = HttpServer(self._handle, max_body=MAX_BODY)
        # An agent hand-over: the previous agent's listening socket (taken), or this
        # agent's passed on (its path is the new agent's then: never unlinked here).
        self.inherited: socket.socket | None = None
        self.handed_over = False
        self._last_bad_log = -BAD_REQUEST_LOG_INTERVAL
        self._bad_since_log = 0

    async def start(self) -> None:
        if self.inherited is not None:
            sock, self.inherited = self.inherited, None
            await self._server.adopt(sock)
            log.info("serving the CNI hand-off at %s (taken over)", self.path)
            return
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._replace_stale()
        old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
        try:
            await self._server.start_unix(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        log.info("serving the CNI hand-off at %s", self.path)

    def _replace_stale(self) -> None:
        """A socket left by a dead agent is removed; one a live agent serves is not."""
        if not self.path.exists() and not self.path.is_symlink():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)  # refused: nobody listens, it is stale
            return
        finally:
            probe.close()
        raise SandboxError(
            f"another process serves the CNI hand-off at {self.path}: is a second agent "
            "running on this node? (kubernetes.cniSocket)"
        )

    def sockets(self) -> list[socket.socket]:
        return self._server.sockets()

    def hand_over(self) -> None:
        """A new agent serves the socket now: stop accepting, leave its path alone."""
        self.handed_over = True
        self._server.stop_listening()

    async def close(self) -> None:
        await self._server.close()
        if not self.handed_over:
            with contextlib.suppress(OSError):
                self.path.unlink()

    # -- requests ----------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        command_name = request.path.removeprefix(PATH_PREFIX)
        try:
            command = Command(command_name) if request.path.startswith(PATH_PREFIX) else None
        except ValueError:
            command = None
        if request.method != "POST" or command is None:
            return self._bad(
                "", f"{request.method} {request.path}: expected POST {PATH_PREFIX}add|del|check"
            )
        try:
            sandbox = decode_request(request.body)
        except HandoffError as exc:
            return self._bad(command.value, str(exc))
        started = time.monotonic()
        deadline = started + self.enrol_timeout
        try:
            if command is Command.ADD:
                return await self._add(sandbox, deadline, started)
            if command is Command.DEL:
                pod = await self.host.release(sandbox, min(deadline, started + RELEASE_WAIT))
                self.observe("del", "ok", None)
                return self._reply(200, SandboxReply(pod=pod or sandbox.pod))
            outcome = self.host.check(sandbox)
            if outcome.result in ("meshed", "not_meshed"):
                self.observe("check", "ok", None)
                return self._reply(
                    200, SandboxReply(pod=sandbox.pod, meshed=outcome.result == "meshed")
                )
            self.observe("check", "failed", None)
            return self._reply(500, SandboxReply(pod=sandbox.pod, message=outcome.message))
        except BadRequest as exc:
            return self._bad(command.value, str(exc))
        except (HandoffFailure, SandboxError) as exc:
            log.error("CNI %s of %s failed: %s", command.value, sandbox.pod, exc)
            self.observe(command.value, "failed", time.monotonic() - started)
            return self._reply(500, SandboxReply(pod=sandbox.pod, message=str(exc)))

    async def _add(self, sandbox: SandboxRequest, deadline: float, started: float) -> Response:
        record = await self.host.admit(sandbox, deadline)
        admitted = time.monotonic()
        outcome = await self.host.enrolment(record, deadline)
        elapsed = time.monotonic() - started
        # Where the time went: finding the pod and recording its sandbox, then its enrolment.
        phases = {
            "admit_ms": round((admitted - started) * 1000, 1),
            "enrol_ms": round((started + elapsed - admitted) * 1000, 1),
        }
        self.observe("add", outcome.result, elapsed)
        if outcome.result in ("meshed", "not_meshed"):
            meshed = outcome.result == "meshed"
            log.info(
                "CNI ADD of %s answered: %s in %.1f ms%s",
                record.key,
                "meshed" if meshed else "not meshed",
                elapsed * 1000,
                f" ({outcome.message})" if outcome.message else "",
                extra={"fields": phases},
            )
            return self._reply(
                200, SandboxReply(pod=record.key, meshed=meshed, message=outcome.message)
            )
        log.error("CNI ADD of %s refused: %s", record.key, outcome.message)
        status = 503 if outcome.result == "timeout" else 500
        return self._reply(status, SandboxReply(pod=record.key, message=outcome.message))

    def _bad(self, command: str, message: str) -> Response:
        """400, and a log line: throttled, since a caller can send them at will."""
        if command:
            self.observe(command, "bad_request", None)
        self._bad_since_log += 1
        now = time.monotonic()
        if now - self._last_bad_log >= BAD_REQUEST_LOG_INTERVAL:
            log.warning(
                "refused %d bad CNI hand-off request(s) since the last such line; latest: %s",
                self._bad_since_log,
                message,
            )
            self._bad_since_log = 0
            self._last_bad_log = now
        return self._reply(400, SandboxReply(message=message))

    @staticmethod
    def _reply(status: int, reply: SandboxReply) -> Response:
        return Response(status, encode(reply), "application/json")


async def wait_until(
    ready: Callable[[], bool], changed: Callable[[], Awaitable[object]], deadline: float
) -> bool:
    """Re-check *ready* each time *changed* returns, until *deadline* (monotonic).

    *changed* is called right after each check, in the same step of the event loop, so it
    must capture what it waits for at once (a bound ``Event.wait()``). It is awaited in the
    caller's own task under a timeout scope, not in ``wait_for``'s task per wait: a change
    wakes the waiter in one turn of the loop, so a CNI ADD is answered before the agent's
    next step (the next pod's start)."""
    while not ready():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await changed()
    return True
