"""The agent's text log: one line per record, whatever a peer put in it."""

from __future__ import annotations

import logging
import sys

from smesh.agent import logs


def fail() -> None:
    raise ValueError("boom")


def record(msg: str, *args: object, exc: bool = False, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("smesh.dataplane", logging.WARNING, __file__, 1, msg, args, None)
    rec.fields = fields
    if exc:
        try:
            fail()
        except ValueError:
            rec.exc_info = sys.exc_info()
    return rec


def test_a_reason_a_peer_sent_cannot_start_a_line_of_its_own() -> None:
    forged = "bye\n2026-12-01 08:00:00,000 INFO    smesh.agent: pod meshed"
    text = logs.TextFormatter().format(record("peer reset: %s", forged, detail=forged))
    assert "\n" not in text
    assert "bye\\x0a2026-12-01" in text


def test_a_traceback_keeps_its_lines() -> None:
    text = logs.TextFormatter().format(record("failed", exc=True))
    assert text.splitlines()[0].endswith("failed")
    assert "ValueError: boom" in text.splitlines()[-1]
