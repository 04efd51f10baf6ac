"""Reading the logs agents are still writing: `smesh lab logs` hands its reader whole
lines, and :func:`smesh.jsonlines.whole_records` parses only those."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from smesh.jsonlines import whole_records
from smesh.lab import logs


class Writes:
    """An output that keeps each write apart, to see where the copy cut the log."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        if data:
            self.writes.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> bytes:
        return b"".join(self.writes)

    @property
    def out(self) -> BinaryIO:
        return cast(BinaryIO, self)


def later(seconds: float, action: Callable[[], object]) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_a_line_being_written_is_held_until_it_is_whole(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b'{"n": 1}\n{"n": 2, "msg": "cut whe')
    out = Writes()
    writer = later(0.2, lambda: append(log, b're the buffer ended"}\n'))
    logs.copy(log, out.out, poll=0.05, settle=30)  # returns once the line is whole
    writer.join()
    assert out.text == b'{"n": 1}\n{"n": 2, "msg": "cut where the buffer ended"}\n'
    assert all(w.endswith(b"\n") for w in out.writes)


def test_a_line_that_is_never_finished_is_still_shown(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b'{"n": 1}\n{"n": 2, "msg": "the agent died he')
    out = Writes()
    logs.copy(log, out.out, poll=0.05, settle=0.2)
    assert out.writes == [b'{"n": 1}\n', b'{"n": 2, "msg": "the agent died he']


def test_a_plain_copy_ends_while_the_writer_keeps_cutting_lines(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b'{"n": 0, "m')
    done = threading.Event()

    def keep_writing() -> None:
        n = 0
        while not done.is_set():  # every write ends in the middle of a line
            n += 1
            append(log, b'sg": "x"}\n{"n": %d, "m' % n)
            time.sleep(0.02)

    writer = later(0, keep_writing)
    out = Writes()
    try:
        logs.copy(log, out.out, poll=0.05, settle=0.3)  # does not turn into a follow
    finally:
        done.set()
        writer.join()
    assert out.text.startswith(b'{"n": 0, "msg": "x"}\n')


def test_following_a_log_written_in_pieces_gives_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b"")
    lines = [b'{"n": %d, "msg": "%s"}\n' % (n, b"x" * n) for n in range(40)]
    data = b"".join(lines)

    def write_in_pieces() -> None:
        for start in range(0, len(data), 37):  # cut anywhere, as a buffer would
            append(log, data[start : start + 37])
            time.sleep(0.005)
        time.sleep(0.1)
        log.unlink()  # lab down

    writer = later(0, write_in_pieces)
    out = Writes()
    logs.copy(log, out.out, follow=True, poll=0.01)
    writer.join()
    assert out.text == data
    assert all(w.endswith(b"\n") for w in out.writes)


def test_following_shows_the_cut_last_line_of_an_agent_that_died(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b'{"n": 1}\n{"n": 2, "msg": "killed mid-li')
    out = Writes()
    stopped = threading.Event()
    reader = threading.Thread(
        target=logs.copy,
        args=(log, out.out),
        kwargs={"follow": True, "poll": 0.05, "settle": 0.2, "stop": stopped.is_set},
    )
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while len(out.writes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stopped.set()
        reader.join()
    assert out.writes[:2] == [b'{"n": 1}\n', b'{"n": 2, "msg": "killed mid-li']


def test_a_plain_copy_does_not_wait_for_a_log_that_ends_its_line(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_bytes(b'{"n": 1}\n')
    out = Writes()
    started = time.monotonic()
    logs.copy(log, out.out, poll=1, settle=5)
    assert out.text == b'{"n": 1}\n'
    assert time.monotonic() - started < 1  # no settling: nothing was cut


def test_records_of_a_log_being_written_leave_out_its_cut_last_line(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    log.write_text('{"n": 1}\nnot JSON: a line from before logging was set up\n{"n": 2, "m')
    assert whole_records(log) == [{"n": 1}]
    append(log, b'sg": "whole now"}\n')
    assert whole_records(log) == [{"n": 1}, {"n": 2, "msg": "whole now"}]


def test_records_of_a_log_cut_inside_a_character(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    line = '{"msg": "caf\u00e9"}\n'.encode()
    log.write_bytes(line + line[:-4])  # the next line cut in the middle of "é"
    assert whole_records(log) == [{"msg": "caf\u00e9"}]
