"""What the lab kubelet reports and decides about a pod, as pure functions.

The pod's phase, conditions and container statuses follow the kubelet's rules (``getPhase``,
``generateAPIPodStatus``) for pods without init containers: a container is ready while its
process runs and, if it has a readiness probe, the probe passes. Restarts follow the pod's
``restartPolicy`` with the kubelet's crash-loop backoff, shortened for a lab
(:data:`RESTART_BACKOFF`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: (first delay, cap, seconds of running after which the backoff starts over). The kubelet
#: uses (10 s, 300 s, 600 s); a lab wants to see a crash loop in seconds, not minutes.
RESTART_BACKOFF = (1.0, 30.0, 60.0)

WAITING = "waiting"
RUNNING = "running"
TERMINATED = "terminated"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """A ``MicroTime`` (Lease renewTime, Event eventTime)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ContainerRecord:
    """One container of a pod as the kubelet runs it (persisted in the sandbox record)."""

    name: str
    image: str
    state: str = WAITING
    reason: str = "ContainerCreating"  # of the waiting or terminated state
    message: str = ""
    container_id: str = ""
    pid: int = 0
    proc_start: int = 0  # /proc start time: tells the process apart from a reused pid
    started_at: str = ""
    finished_at: str = ""
    exit_code: int = 0
    restarts: int = 0
    crashes: int = 0  # consecutive, for the backoff
    last_state: dict[str, Any] = field(default_factory=dict)
    probed: bool = False  # the container has a readinessProbe
    probe_ready: bool = False  # ... and it last succeeded (successThreshold times)

    @property
    def ready(self) -> bool:
        """Running, and passing its readiness probe if it has one."""
        return self.state == RUNNING and (self.probe_ready or not self.probed)

    def status(self) -> dict[str, Any]:
        """The container's entry of ``status.containerStatuses``."""
        if self.state == RUNNING:
            state: dict[str, Any] = {RUNNING: {"startedAt": self.started_at}}
        elif self.state == TERMINATED:
            state = {TERMINATED: self.terminated()}
        else:
            waiting = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {WAITING: waiting}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.state == RUNNING,
            "restartCount": self.restarts,
            "state": state,
            "lastState": self.last_state,
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status

    def terminated(self) -> dict[str, Any]:
        terminated: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at or None,
            "finishedAt": self.finished_at or None,
        }
        if self.message:
            terminated["message"] = self.message
        if self.container_id:
            terminated["containerID"] = self.container_id
        return terminated

    def exited(self, exit_code: int, reason: str | None = None, message: str = "") -> None:
        self.state = TERMINATED
        self.message = message
        self.probe_ready = False
        self.exit_code = exit_code
        self.reason = reason or ("Completed" if exit_code == 0 else "Error")
        self.finished_at = now_rfc3339()
        self.pid = self.proc_start = 0


def init_done(record: ContainerRecord) -> bool:
    """An init container that has run to success (it never runs again)."""
    return record.state == TERMINATED and record.exit_code == 0


def init_policy(policy: str) -> str:
    """The restart policy of init containers: a failed one is retried unless ``Never``; one
    that succeeded is done (``Always`` would run it again)."""
    return "Never" if policy == "Never" else "OnFailure"


def should_restart(policy: str, exit_code: int) -> bool:
    """Whether ``restartPolicy`` *policy* (Always, OnFailure, Never) restarts this exit."""
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return exit_code != 0
    return True


def restart_delay(crashes: int, backoff: tuple[float, float, float] = RESTART_BACKOFF) -> float:
    """Seconds before restarting a container that has exited *crashes* times in a row."""
    initial, cap, _reset = backoff
    if crashes <= 0:
        return 0.0
    return float(min(cap, initial * 2 ** min(crashes - 1, 32)))


def crashes_after_exit(
    crashes: int, ran_seconds: float, backoff: tuple[float, float, float] = RESTART_BACKOFF
) -> int:
    """The crash count after one more exit: a container that ran long enough starts over."""
    return 1 if ran_seconds >= backoff[2] else crashes + 1


def seconds_since(rfc3339: str) -> float:
    """Seconds from a status timestamp to now (0 for none)."""
    if not rfc3339:
        return 0.0
    then = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return (datetime.datetime.now(datetime.UTC) - then).total_seconds()


def phase(records: Sequence[ContainerRecord], sandbox_ready: bool) -> str:
    """The pod's phase from its containers (the kubelet's ``getPhase``, no init containers)."""
    if not sandbox_ready or not records:
        return "Pending"
    fresh = sum(1 for r in records if r.state == WAITING and not r.last_state)
    if fresh:
        return "Pending"
    if any(r.state == RUNNING or (r.state == WAITING and r.last_state) for r in records):
        return "Running"
    # Every container terminated for good (restartPolicy let none of them restart).
    return "Succeeded" if all(r.exit_code == 0 for r in records) else "Failed"


def conditions(
    previous: Sequence[Mapping[str, Any]], wanted: Mapping[str, bool], now: str
) -> list[dict[str, Any]]:
    """*wanted* (type → status) as pod conditions, keeping a transition time while unchanged."""
    before = {c.get("type"): c for c in previous}
    result = []
    for kind, value in wanted.items():
        status = "True" if value else "False"
        old = before.get(kind)
        since = old.get("lastTransitionTime") if old and old.get("status") == status else None
        result.append({"type": kind, "status": status, "lastTransitionTime": since or now})
    return result


def pod_status(
    *,
    records: Sequence[ContainerRecord],
    sandbox_ready: bool,
    host_ip: str,
    host_ips: Sequence[str],
    pod_ips: Sequence[str],
    previous_conditions: Sequence[Mapping[str, Any]],
    start_time: str,
    init_records: Sequence[ContainerRecord] = (),
) -> dict[str, Any]:
    """The ``status`` the kubelet merge-patches onto the pod (*init_records*: its init
    containers, which run one by one to success before any container starts)."""
    pod_phase = phase(records, sandbox_ready)
    ready = pod_phase == "Running" and all(r.ready for r in records)
    wanted = {
        "PodReadyToStartContainers": sandbox_ready,
        "Initialized": all(init_done(r) for r in init_records),
        "ContainersReady": ready,
        "Ready": ready,
        "PodScheduled": True,
    }
    status: dict[str, Any] = {
        "phase": pod_phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": ip} for ip in host_ips],
        "startTime": start_time,
        "conditions": conditions(previous_conditions, wanted, now_rfc3339()),
        "containerStatuses": [r.status() for r in records],
    }
    if init_records:
        status["initContainerStatuses"] = [r.status() for r in init_records]
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    return status
