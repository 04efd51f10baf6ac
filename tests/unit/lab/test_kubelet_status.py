"""The lab kubelet's pure decisions: pod phase, conditions, container statuses, restarts."""

from __future__ import annotations

import pytest

from smesh.lab.kubelet_status import (
    RESTART_BACKOFF,
    RUNNING,
    TERMINATED,
    WAITING,
    ContainerRecord,
    conditions,
    crashes_after_exit,
    init_done,
    init_policy,
    phase,
    pod_status,
    restart_delay,
    should_restart,
)


def record(state: str, exit_code: int = 0, restarted: bool = False) -> ContainerRecord:
    rec = ContainerRecord("main", "none", state=state, exit_code=exit_code)
    if state == RUNNING:
        rec.started_at = "2026-01-01T00:00:00Z"
    if restarted:
        rec.last_state = {TERMINATED: {"exitCode": 1}}
    return rec


@pytest.mark.parametrize(
    ("policy", "exit_code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 3, True),
        ("Never", 0, False),
        ("Never", 3, False),
    ],
)
def test_restart_policy(policy: str, exit_code: int, restart: bool) -> None:
    assert should_restart(policy, exit_code) is restart


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    initial, cap, _ = RESTART_BACKOFF
    delays = [restart_delay(n) for n in range(0, 12)]
    assert delays[0] == 0.0
    assert delays[1] == initial
    assert delays[2] == 2 * initial
    assert delays[3] == 4 * initial
    assert max(delays) == cap
    assert delays == sorted(delays)


def test_a_container_that_ran_long_enough_starts_its_backoff_over() -> None:
    reset = RESTART_BACKOFF[2]
    assert crashes_after_exit(0, 0.5) == 1
    assert crashes_after_exit(4, 0.5) == 5
    assert crashes_after_exit(4, reset - 1) == 5
    assert crashes_after_exit(4, reset) == 1


@pytest.mark.parametrize(
    ("records", "sandbox_ready", "expected"),
    [
        ([record(RUNNING)], False, "Pending"),  # no sandbox yet
        ([], True, "Pending"),
        ([record(WAITING)], True, "Pending"),  # never started
        ([record(RUNNING), record(WAITING)], True, "Pending"),
        ([record(RUNNING)], True, "Running"),
        ([record(WAITING, restarted=True)], True, "Running"),  # in its restart backoff
        ([record(TERMINATED, 0), record(RUNNING)], True, "Running"),
        ([record(TERMINATED, 0), record(TERMINATED, 0)], True, "Succeeded"),
        ([record(TERMINATED, 0), record(TERMINATED, 2)], True, "Failed"),
    ],
)
def test_phase(records: list[ContainerRecord], sandbox_ready: bool, expected: str) -> None:
    assert phase(records, sandbox_ready) == expected


def test_container_status_per_state() -> None:
    waiting = ContainerRecord("a", "img", reason="CrashLoopBackOff", message="back-off 2s")
    assert waiting.status()["state"] == {
        "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2s"}
    }
    assert waiting.status()["ready"] is False
    running = record(RUNNING)
    running.container_id = "smesh-lab://abc"
    status = running.status()
    assert status["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert status["ready"] is True
    assert status["containerID"] == "smesh-lab://abc"
    running.exited(137)
    terminated = running.status()["state"]["terminated"]
    assert terminated["exitCode"] == 137
    assert terminated["reason"] == "Error"
    assert running.status()["ready"] is False
    completed = record(RUNNING)
    completed.exited(0)
    assert completed.status()["state"]["terminated"]["reason"] == "Completed"


def test_conditions_keep_their_transition_time_while_unchanged() -> None:
    first = conditions([], {"Ready": False, "PodScheduled": True}, "t1")
    assert first == [
        {"type": "Ready", "status": "False", "lastTransitionTime": "t1"},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "t1"},
    ]
    second = conditions(first, {"Ready": True, "PodScheduled": True}, "t2")
    assert second[0] == {"type": "Ready", "status": "True", "lastTransitionTime": "t2"}
    assert second[1]["lastTransitionTime"] == "t1"


def test_pod_status_of_a_running_pod() -> None:
    status = pod_status(
        records=[record(RUNNING)],
        sandbox_ready=True,
        host_ip="198.19.0.1",
        host_ips=["198.19.0.1", "fd00:198:19::1"],
        pod_ips=["198.18.1.10", "fd00:198:18:1::a"],
        previous_conditions=[],
        start_time="2026-01-01T00:00:00Z",
    )
    assert status["phase"] == "Running"
    assert status["podIP"] == "198.18.1.10"
    assert status["podIPs"] == [{"ip": "198.18.1.10"}, {"ip": "fd00:198:18:1::a"}]
    assert status["hostIPs"] == [{"ip": "198.19.0.1"}, {"ip": "fd00:198:19::1"}]
    kinds = {c["type"]: c["status"] for c in status["conditions"]}
    assert kinds == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
        "PodScheduled": "True",
    }


def test_pod_status_before_the_sandbox_has_no_ip_and_is_not_ready() -> None:
    status = pod_status(
        records=[ContainerRecord("main", "none")],
        sandbox_ready=False,
        host_ip="198.19.0.1",
        host_ips=["198.19.0.1"],
        pod_ips=[],
        previous_conditions=[],
        start_time="2026-01-01T00:00:00Z",
    )
    assert status["phase"] == "Pending"
    assert "podIP" not in status
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}
    kinds = {c["type"]: c["status"] for c in status["conditions"]}
    assert kinds["Ready"] == "False"
    assert kinds["PodReadyToStartContainers"] == "False"


def test_a_probed_container_is_ready_only_while_its_probe_passes() -> None:
    probed = record(RUNNING)
    probed.probed = True
    status = pod_status(
        records=[probed, record(RUNNING)],
        sandbox_ready=True,
        host_ip="198.19.0.1",
        host_ips=["198.19.0.1"],
        pod_ips=["198.18.1.10"],
        previous_conditions=[],
        start_time="2026-01-01T00:00:00Z",
    )
    assert [c["ready"] for c in status["containerStatuses"]] == [False, True]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert status["phase"] == "Running"
    probed.probe_ready = True
    assert probed.status()["ready"] is True
    probed.exited(0)
    assert probed.probe_ready is False


def test_a_termination_message_is_in_the_terminated_state() -> None:
    rec = record(RUNNING)
    rec.exited(4, message="it broke")
    assert rec.status()["state"][TERMINATED]["message"] == "it broke"
    rec.exited(0)
    assert "message" not in rec.status()["state"][TERMINATED]


def test_init_containers_gate_initialized_and_are_reported_apart() -> None:
    def status(init: ContainerRecord) -> dict[str, object]:
        return pod_status(
            records=[ContainerRecord("main", "none")],
            sandbox_ready=True,
            host_ip="198.19.0.1",
            host_ips=["198.19.0.1"],
            pod_ips=["198.18.1.10"],
            previous_conditions=[],
            start_time="2026-01-01T00:00:00Z",
            init_records=[init],
        )

    running = ContainerRecord("install-cni", "none", state=RUNNING)
    got = status(running)
    assert got["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in got["conditions"]}["Initialized"] == "False"  # type: ignore[attr-defined]
    assert [c["name"] for c in got["initContainerStatuses"]] == ["install-cni"]  # type: ignore[attr-defined]
    assert [c["name"] for c in got["containerStatuses"]] == ["main"]  # type: ignore[attr-defined]
    done = ContainerRecord("install-cni", "none", state=TERMINATED, exit_code=0)
    assert init_done(done)
    assert not init_done(ContainerRecord("install-cni", "none", state=TERMINATED, exit_code=1))
    got = status(done)
    assert {c["type"]: c["status"] for c in got["conditions"]}["Initialized"] == "True"  # type: ignore[attr-defined]


def test_an_init_container_that_succeeded_never_runs_again() -> None:
    assert init_policy("Always") == init_policy("OnFailure") == "OnFailure"
    assert init_policy("Never") == "Never"
    assert not should_restart(init_policy("Always"), 0)
    assert should_restart(init_policy("Always"), 1)
    assert not should_restart(init_policy("Never"), 1)
