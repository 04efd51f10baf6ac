"""Faults inside the agent: the app sees a reset, the log says why, and the agent serves on."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import pytest

from smesh.dataplane import flows
from tests.unit.dataplane.harness import SERVER_IP, Mesh
from tests.unit.dataplane.test_relay import echo_server, ping


@contextlib.contextmanager
def descriptors_left(count: int) -> Iterator[None]:
    """Let this process open only *count* more file descriptors, as a busy node might.

    Holes below the highest open descriptor are filled first, so the limit counts exactly.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        highest = max(int(name) for name in os.listdir("/proc/self/fd"))
        while True:
            fd = os.open("/dev/null", os.O_RDONLY)
            if fd > highest:
                os.close(fd)
                break
            held.append(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd + count, hard))
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in held:
            os.close(fd)


def test_a_server_pod_out_of_descriptors_answers_502_and_serves_on(mesh: Mesh) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    ping(mesh)  # the carrier is up: a new stream costs the server side one socket
    mesh.recorder.wait_for(lambda r: len(r) == 2)
    with descriptors_left(2):  # the app's socket and the client agent's accept
        mesh.expect_reset(b"hello")
        records = mesh.recorder.wait_for(lambda r: len(r) == 4)
    inbound = next(r for r in records[2:] if r.direction == "inbound")
    outbound = next(r for r in records[2:] if r.direction == "outbound")
    assert inbound.result == "error"
    assert "Too many open files" in inbound.detail
    assert outbound.result == "refused"
    assert "502" in outbound.detail
    ping(mesh)  # same carrier, next stream
    assert mesh.recorder.open_carriers == {"client": 1, "server": 1}
    server.close()


def test_a_bug_setting_up_an_outbound_connection_resets_only_that_one(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = echo_server()
    mesh.destination = (SERVER_IP, server.port)
    real = flows.outbound
    calls = []

    def first_one_fails(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(flows, "outbound", first_one_fails)
    mesh.expect_reset(b"hello")
    records = mesh.recorder.wait_for(lambda r: len(r) == 1)
    assert (records[0].result, records[0].detail) == ("error", "internal error")
    assert "unexpected error setting up a connection of pod-1" in caplog.text
    assert "RuntimeError: a bug" in caplog.text
    ping(mesh)
    server.close()
