"""The agent hand-over: its messages (sans-IO), and a real exchange of listening sockets."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smesh.agent import handover
from smesh.agent.handover import Decoder, HandoverError, OfferReader, SocketKey


def keys(count: int) -> list[SocketKey]:
    return [
        SocketKey(f"default/pod-{i}", "inbound", f"198.18.1.{i % 250}:18001") for i in range(count)
    ]


def read_offer(messages: list[tuple[bytes, int]]) -> handover.Offer | None:
    decoder, reader = Decoder(), OfferReader()
    offer = None
    for message, fds in messages:
        reader.descriptors(fds)
        for doc in decoder.feed(message):
            offer = reader.take(doc)
    return offer


def test_an_offer_of_many_sockets_goes_in_batches_the_kernel_takes() -> None:
    offered = keys(450)
    messages = handover.offer_messages(offered, 1234)
    assert [fds for _m, fds in messages] == [200, 200, 50, 0]
    offer = read_offer(messages)
    assert offer is not None
    assert (offer.pid, offer.keys) == (1234, offered)


@given(st.integers(0, 30), st.data())
def test_any_cutting_of_the_stream_reads_the_same_messages(count: int, data: st.DataObject) -> None:
    whole = b"".join(m for m, _fds in handover.offer_messages(keys(count), 7))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(whole) - 1)))))
    decoder, docs = Decoder(), []
    for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True):
        docs += decoder.feed(whole[a:b])
    assert [d["type"] for d in docs] == ["sockets"] * (count > 0) + ["offer-end"]


@given(st.binary(max_size=200))
def test_garbage_is_a_handover_error_never_another_exception(raw: bytes) -> None:
    reader = OfferReader()
    try:
        reader.descriptors(1)
        for doc in Decoder().feed(raw):
            reader.take(doc)
    except HandoverError:
        pass


def framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def message(**doc: object) -> bytes:
    return handover.encode(doc)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([(message(type="offer-end", count=0, pid=1), 1)], "1 descriptors came that no message"),
        ([(handover.offer_messages(keys(2), 1)[0][0], 1)], "names 2 sockets, 1 descriptors"),
        ([(message(type="offer-end", count=3, pid=1), 0)], "counts 3 sockets, 0 came"),
        ([(message(type="offer-end", count=0, pid=0), 0)], "counts 0 sockets"),
        ([(message(type="ack"), 0)], "unexpected 'ack' message"),
        ([(message(type="refuse", reason="busy"), 0)], "refused the hand-over: busy"),
        (
            [(message(type="sockets", sockets=[{"pod": "", "kind": "ssh", "address": "x"}]), 1)],
            "unknown socket kind 'ssh'",
        ),
        ([(message(type="sockets", sockets=[{"pod": 1}]), 1)], "malformed socket entry"),
        (
            [
                (message(type="sockets", sockets=[k.as_dict() for k in keys(1) * 2]), 2),
                (message(type="offer-end", count=2, pid=1), 0),
            ],
            "offered twice",
        ),
        ([(b"\x00\x00\x00\x02[]", 0)], "not an object with a type"),
        ([(b"\x00\x00\x00\x01{", 0)], "not JSON"),
        ([(b"\xff\xff\xff\xff", 0)], "at most 1048576"),
        ([(framed(b'{"type":"ack","version":2222}'), 0)], "version 2222, this one 1"),
    ],
)
def test_a_malformed_offer_says_why(messages: list[tuple[bytes, int]], error: str) -> None:
    with pytest.raises(HandoverError, match=error):
        read_offer(messages)


def test_socket_addresses_are_keyed_as_the_wiring_writes_them() -> None:
    assert handover.address("127.0.0.1", 18000) == "127.0.0.1:18000"
    assert handover.address("::1", 18000) == "[::1]:18000"
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        assert handover.address_of(sock) == handover.address("::1", sock.getsockname()[1])


# -- a real exchange ---------------------------------------------------------------------


class OldAgent:
    """A HandoverServer on its own event loop thread, offering two TCP listeners."""

    def __init__(self, path: Path) -> None:
        self.listeners = []
        for host in ("127.0.0.1", "::1"):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.bind((host, 0))
            sock.listen(16)
            self.listeners.append(sock)
        self.acked: list[int] = []
        self.results: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.server = handover.HandoverServer(
            path, self.offered, self.acked.append, self.results.append
        )
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    async def _start(self) -> None:
        self.server.start()

    def offered(self) -> list[tuple[SocketKey, socket.socket]]:
        found = [
            (SocketKey("default/pod-1", "outbound", handover.address_of(s)), s)
            for s in self.listeners
        ]
        assert self.server.sock is not None
        found.append((SocketKey("", "handover", str(self.server.path)), self.server.sock))
        return found

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for sock in self.listeners:
            sock.close()


def eventually(check: object, timeout: float = 5) -> None:
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.01)


def test_the_new_agent_gets_the_very_listening_sockets_and_what_is_queued_on_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run" / "handover.sock"
    old = OldAgent(path)
    try:
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        host, port = old.listeners[0].getsockname()
        queued = socket.create_connection((host, port))  # waits in the backlog
        incoming = handover.receive(path)
        assert incoming is not None
        assert incoming.pid == os.getpid()
        assert len(incoming.sockets) == 3
        taken = incoming.take(SocketKey("default/pod-1", "outbound", f"{host}:{port}"))
        assert taken is not None
        assert old.acked == []  # nothing changed before the ack
        incoming.acknowledge(4321)
        assert old.acked == [os.getpid()]  # by SO_PEERCRED, not by what it says
        assert old.server.sock is None  # its copy of the hand-over socket is closed
        conn, _ = taken.accept()  # the connection queued before the hand-over
        queued.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        conn.close()
        queued.close()
        taken.close()
        incoming.close()
    finally:
        old.close()


def test_a_new_agent_that_fails_before_its_ack_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    old = OldAgent(path)
    try:
        first = handover.receive(path)
        assert first is not None
        first.refuse("the new agent cannot start: test")  # or it dies: the same
        eventually(lambda: old.results == ["failed"])
        assert old.acked == []
        second = handover.receive(path)  # the old agent still serves, and hands over later
        assert second is not None
        second.acknowledge(99)
        assert old.acked == [os.getpid()]
        second.close()
    finally:
        old.close()


def test_without_a_running_agent_there_is_nothing_to_take(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    assert handover.receive(path) is None
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # a dead agent's socket: nobody listens
    stale.close()
    assert handover.receive(path) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
def test_a_process_of_another_user_is_refused_even_with_the_socket_opened_up() -> None:
    opened_up = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is not reachable
    path = opened_up / "handover.sock"
    old = OldAgent(path)
    try:
        opened_up.chmod(0o777)
        path.chmod(0o777)  # only SO_PEERCRED is left to turn it away
        child = os.fork()
        if child == 0:  # pragma: no cover - the child
            os.setuid(65534)
            try:
                handover.receive(path)
            except HandoverError:
                os._exit(0)
            os._exit(1)
        _pid, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        eventually(lambda: old.results == ["refused"])
        assert old.acked == []
    finally:
        old.close()
        shutil.rmtree(opened_up)


def test_a_stop_during_a_hand_over_lets_it_finish_before_anything_is_pulled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "handover.sock"
    old = OldAgent(path)
    try:
        incoming = handover.receive(path)  # the offer came; the ack is still to come
        assert incoming is not None
        settled = asyncio.run_coroutine_threadsafe(old.server.settle(), old.loop)
        time.sleep(0.3)
        assert not settled.done()  # the stop waits for the hand-over's outcome
        incoming.acknowledge(4321)
        settled.result(5)
        assert old.server.handed_over  # so the agent lingers rather than stopping
        assert old.acked == [os.getpid()]
        incoming.close()
    finally:
        old.close()


def test_a_stop_with_no_hand_over_under_way_takes_no_new_one(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    old = OldAgent(path)
    try:
        asyncio.run_coroutine_threadsafe(old.server.settle(), old.loop).result(5)
        assert not old.server.handed_over
        with pytest.raises(handover.HandoverError):
            handover.receive(path, timeout=1)  # nobody answers on the socket any more
    finally:
        old.close()
