"""The client's pool of single-use TLS sessions (stateful TLS 1.3 tickets)."""

from __future__ import annotations

import ssl
from typing import cast

from smesh.dataplane.context import SessionCache


class _Session:
    has_ticket = True


def _session() -> ssl.SSLSession:
    return cast(ssl.SSLSession, _Session())


def test_a_session_is_handed_out_once_newest_first() -> None:
    cache = SessionCache()
    old, new = _session(), _session()
    cache.put(("a",), old, now=0)
    cache.put(("a",), new, now=1)
    assert cache.take(("a",), now=2) is new
    assert cache.take(("a",), now=2) is old
    assert cache.take(("a",), now=2) is None
    assert len(cache) == 0


def test_keys_are_separate_and_sessions_without_ticket_are_not_kept() -> None:
    cache = SessionCache()
    no_ticket = _Session()
    no_ticket.has_ticket = False
    cache.put(("a",), cast(ssl.SSLSession, no_ticket), now=0)
    cache.put(("a",), None, now=0)
    cache.put(("b",), _session(), now=0)
    assert cache.take(("a",), now=0) is None
    assert cache.take(("b",), now=0) is not None


def test_old_sessions_expire_and_pools_and_keys_are_bounded() -> None:
    cache = SessionCache(capacity=2, per_key=3, max_age=10)
    cache.put(("a",), _session(), now=0)
    assert cache.take(("a",), now=10) is None  # too old to offer
    for _ in range(5):
        cache.put(("a",), _session(), now=20)
    assert len(cache) == 3
    cache.put(("b",), _session(), now=20)
    cache.put(("c",), _session(), now=20)  # a third key: the least recently used goes
    assert cache.take(("a",), now=20) is None
    assert len(cache) == 2
