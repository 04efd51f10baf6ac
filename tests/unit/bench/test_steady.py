"""The steady load's sans-IO parts: messages, checks, the bulk generator, pacing, windows."""

from __future__ import annotations

import hashlib

import pytest

from smesh.bench import steady
from smesh.bench.steady import Attempt


def test_a_long_lived_message_is_numbered_and_carries_the_marker() -> None:
    assert steady.long_message(3, 12) == b"smesh-handover-marker long 3 00000012\n"
    assert steady.MARKER.encode() in steady.new_message(7)


def test_check_refuses_a_lost_a_repeated_or_a_reordered_message() -> None:
    sent = steady.long_message(0, 5)
    steady.check(sent, sent)
    for wrong in (steady.long_message(0, 4), steady.long_message(0, 6), sent * 2, sent[:-1]):
        with pytest.raises(steady.Wrong):
            steady.check(sent, wrong)


def test_the_bulk_generator_is_exactly_the_size_and_the_same_every_time() -> None:
    size = steady.BLOCK * 2 + 12345
    pieces = list(steady.bulk_chunks(size, chunk=300_000))
    assert sum(map(len, pieces)) == size
    assert max(map(len, pieces)) <= 300_000
    again = hashlib.sha256(b"".join(steady.bulk_chunks(size))).hexdigest()
    assert hashlib.sha256(b"".join(pieces)).hexdigest() == again
    other = hashlib.sha256(b"".join(steady.bulk_chunks(size, seed=20))).hexdigest()
    assert other != again


def test_pacing_spreads_the_transfer_and_never_holds_back_a_late_one() -> None:
    assert steady.pace_delay(50, 100, elapsed=2.0, seconds=10) == pytest.approx(3.0)
    assert steady.pace_delay(50, 100, elapsed=7.0, seconds=10) == 0.0
    assert steady.pace_delay(50, 100, elapsed=0.0, seconds=0) == 0.0


def test_bulk_answer_is_parsed_or_refused() -> None:
    digest = "ab" * 32
    assert steady.bulk_answer(f"200 {digest}\n".encode()) == (200, digest)
    for bad in (b"", b"200", b"x " + digest.encode(), b"200 abc"):
        with pytest.raises(steady.Wrong):
            steady.bulk_answer(bad)


def test_the_longest_failure_window_runs_to_the_next_connect_that_worked() -> None:
    attempts = [
        Attempt(0.00, 0.01, True),
        Attempt(0.05, 0.06, False),
        Attempt(0.10, 0.11, False),
        Attempt(0.15, 0.16, True),  # a window of 100 ms
        Attempt(0.20, 0.21, False),
        Attempt(0.25, 0.26, True),  # 50 ms
    ]
    assert steady.longest_failure_ms(attempts) == pytest.approx(100.0)
    assert steady.longest_failure_ms(list(reversed(attempts))) == pytest.approx(100.0)


def test_a_failure_window_at_the_end_runs_to_its_last_failure_and_none_is_zero() -> None:
    attempts = [Attempt(0.0, 0.01, True), Attempt(1.0, 1.5, False), Attempt(1.2, 3.0, False)]
    assert steady.longest_failure_ms(attempts) == pytest.approx(2000.0)
    assert steady.longest_failure_ms([Attempt(0.0, 0.01, True)]) == 0.0
    assert steady.longest_failure_ms([]) == 0.0


def test_the_client_needs_the_bulk_port_for_a_bulk_transfer() -> None:
    with pytest.raises(SystemExit):
        steady.parse_args(["client", "h", "1", "/stop", "--bulk-bytes", "10"])
    args = steady.parse_args(["client", "h", "1", "/stop", "--long", "20", "--reconnect"])
    assert (args.long, args.reconnect, args.bulk_bytes) == (20, True, 0)


def test_each_run_of_failures_is_a_window() -> None:
    attempts = [
        Attempt(0.0, 0.1, False),
        Attempt(0.5, 0.6, True),
        Attempt(1.0, 1.1, False),
        Attempt(1.5, 1.6, False),
        Attempt(2.0, 2.1, True),
        Attempt(3.0, 3.4, False),
    ]
    assert steady.failure_windows(attempts) == [(0.0, 0.5), (1.0, 2.0), (3.0, 3.4)]
    assert steady.failure_windows([Attempt(0.0, 0.1, True)]) == []
