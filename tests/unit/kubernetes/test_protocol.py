"""Watch lines classified: objects, bookmarks, and ERROR events as typed errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from smesh.kubernetes.errors import ApiStatusError, ResourceVersionGone, WatchProtocolError
from smesh.kubernetes.protocol import Bookmark, ObjectEvent, parse_watch_line


def line(event_type: str, obj: Any) -> bytes:
    return json.dumps({"type": event_type, "object": obj}).encode()


def ident(raw: Any) -> Any:
    return raw


def test_object_events_are_decoded() -> None:
    pod = {"kind": "Pod", "metadata": {"name": "a", "resourceVersion": "7"}}
    assert parse_watch_line(line("ADDED", pod), ident) == ObjectEvent("ADDED", pod)


def test_bookmark_carries_the_resource_version() -> None:
    raw = {"kind": "Pod", "metadata": {"resourceVersion": "42"}}
    assert parse_watch_line(line("BOOKMARK", raw), ident) == Bookmark("42")


def test_error_410_means_relist() -> None:
    status = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    with pytest.raises(ResourceVersionGone, match="410 Expired: too old"):
        parse_watch_line(line("ERROR", status), ident)


def test_other_errors_are_typed_too() -> None:
    status = {"kind": "Status", "code": 500, "reason": "InternalError", "message": "boom"}
    with pytest.raises(ApiStatusError) as info:
        parse_watch_line(line("ERROR", status), ident)
    assert info.value.code == 500
    assert not isinstance(info.value, ResourceVersionGone)


@pytest.mark.parametrize(
    "bad",
    [b"not json", b'{"type": "ADDED"}', line("RENAMED", {}), line("BOOKMARK", {"metadata": {}})],
)
def test_garbage_is_a_protocol_error(bad: bytes) -> None:
    with pytest.raises(WatchProtocolError):
        parse_watch_line(bad, ident)
