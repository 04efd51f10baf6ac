"""The CNI hand-off's record store and the server's answers to bad requests."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import socket
import stat
from pathlib import Path

import pytest

from smesh.httpclient import exchange
from smesh.kubernetes.handoff import SandboxRequest
from smesh.kubernetes.sandboxes import (
    BadRequest,
    Outcome,
    RecordStore,
    SandboxError,
    SandboxRecord,
    SandboxServer,
)

UID = "8d2d6f2a-4f6e-4c1b-9a51-3c0e1f7b2a10"


def record(uid: str = UID, netns: str = "/run/netns/cni-1") -> SandboxRecord:
    return SandboxRecord(
        uid=uid,
        namespace="shop",
        name="web-1",
        container_id="c0ffee",
        netns=netns,
        cgroup=Path("/sys/fs/cgroup/kubepods/pod" + uid),
        ips=(ipaddress.ip_address("198.18.1.10"),),
    )


def test_records_are_written_0600_in_a_0700_directory_and_read_back(tmp_path: Path) -> None:
    store = RecordStore(tmp_path / "sandboxes")
    store.put(record())
    assert stat.S_IMODE((tmp_path / "sandboxes").stat().st_mode) == 0o700
    path = tmp_path / "sandboxes" / f"{UID}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["containerId"] == "c0ffee"
    assert store.load() == {UID: record()}
    assert [p.name for p in (tmp_path / "sandboxes").iterdir()] == [f"{UID}.json"]  # no tmp


def test_a_record_is_replaced_whole(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.put(record())
    store.put(record(netns="/run/netns/cni-2"))
    assert store.load()[UID].netns == "/run/netns/cni-2"


def test_removal_is_idempotent(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.put(record())
    store.remove(UID)
    store.remove(UID)
    assert store.load() == {}


def test_a_missing_directory_holds_no_records(tmp_path: Path) -> None:
    assert RecordStore(tmp_path / "absent").load() == {}


def test_unreadable_or_misnamed_records_are_dropped_and_the_rest_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RecordStore(tmp_path)
    store.put(record())
    (tmp_path / "garbage.json").write_text("{not json")
    other = "11111111-2222-3333-4444-555555555555"
    (tmp_path / f"{other}.json").write_text(record().model_dump_json(by_alias=True))
    assert store.load() == {UID: record()}
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{UID}.json"]
    assert "garbage.json" in caplog.text
    assert f"names pod UID {UID}" in caplog.text


def test_a_directory_that_cannot_be_written_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SandboxError, match="cannot record the sandbox of shop/web-1"):
        RecordStore(tmp_path / "file" / "sandboxes").put(record())


class Host:
    """Answers every well-formed request; counts what reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def admit(self, request: SandboxRequest, deadline: float) -> SandboxRecord:
        self.calls.append("add")
        if not request.pod_uid:
            raise BadRequest("podUid: required for ADD")
        return record()

    async def enrolment(self, record: SandboxRecord, deadline: float) -> Outcome:
        return Outcome("meshed")

    async def release(self, request: SandboxRequest, deadline: float) -> str:
        self.calls.append("del")
        return ""

    def check(self, request: SandboxRequest) -> Outcome:
        return Outcome("failed", "no such sandbox")


def call(path: Path, target: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, str]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        status, reply = exchange(sock, method, target, [("host", "smesh-agent")], body)
    return status, json.loads(reply)


def test_bad_requests_get_400_naming_the_field_and_the_server_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    socket_path = tmp_path / "run" / "cni.sock"
    host = Host()
    seen: list[tuple[str, str]] = []
    server = SandboxServer(host, socket_path, 1.0, lambda c, r, s: seen.append((c, r)))

    async def scenario() -> None:
        await server.start()
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        loop = asyncio.get_running_loop()
        try:
            good = b'{"containerId": "c0ffee", "podUid": "%s"}' % UID.encode()
            cases = [
                ("/v1/sandboxes/add", b"{not json", "invalid sandbox request"),
                ("/v1/sandboxes/add", b'{"netns": "/x"}', "containerId: required"),
                ("/v1/sandboxes/add", b'{"containerId": "c", "ips": ["x"]}', r"ips\[0\]"),
                ("/v1/sandboxes/add", b'{"containerId": "c"}', "podUid: required"),
                ("/v1/sandboxes/nope", good, "expected POST /v1/sandboxes/add"),
            ]
            for target, body, message in cases:
                status, reply = await loop.run_in_executor(None, call, socket_path, target, body)
                assert status == 400, (target, body)
                assert re.search(message, reply["message"]), reply
            status, reply = await loop.run_in_executor(
                None, call, socket_path, "/v1/sandboxes/add", good
            )
            assert (status, reply["meshed"]) == (200, True)
            status, _ = await loop.run_in_executor(
                None, call, socket_path, "/v1/sandboxes/del", good
            )
            assert status == 200
            status, reply = await loop.run_in_executor(
                None, call, socket_path, "/v1/sandboxes/check", good
            )
            assert (status, reply["message"]) == (500, "no such sandbox")
        finally:
            await server.close()

    asyncio.run(scenario())
    assert not socket_path.exists()
    assert host.calls == ["add", "add", "del"]
    assert seen.count(("add", "bad_request")) == 4
    assert ("add", "meshed") in seen
    assert "bad CNI hand-off request" in caplog.text


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    socket_path = tmp_path / "cni.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()  # bound, never listening: what a dead agent leaves

    async def scenario() -> None:
        first = SandboxServer(Host(), socket_path, 1.0)
        await first.start()
        try:
            second = SandboxServer(Host(), socket_path, 1.0)
            with pytest.raises(SandboxError, match="another process serves the CNI hand-off"):
                await second.start()
        finally:
            await first.close()

    asyncio.run(scenario())
