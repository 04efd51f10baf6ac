"""The lines of a Kubernetes watch stream, classified (sans-IO).

Each line is one JSON ``{"type": ..., "object": ...}``. ADDED/MODIFIED/DELETED carry an
object; BOOKMARK carries only ``metadata.resourceVersion`` (sent because the watch asked for
``allowWatchBookmarks``); ERROR carries a ``Status`` -- with code 410 when the resourceVersion
the watch started from has been compacted away, which the API server reports this way rather
than as an HTTP status once the stream has begun.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from smesh.kubernetes.errors import ApiStatusError, WatchProtocolError, status_error

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectEvent(Generic[T]):
    type: str
    obj: T


@dataclass(frozen=True)
class Bookmark:
    resource_version: str


WatchItem = ObjectEvent[T] | Bookmark


def parse_status(status: Any) -> ApiStatusError:
    """The typed error of a ``Status`` object (from an ERROR event or an HTTP error body)."""
    if not isinstance(status, dict):
        return ApiStatusError(0, "", f"not a Status: {str(status)[:200]}")
    code = status.get("code")
    return status_error(
        code if isinstance(code, int) else 0,
        str(status.get("reason", "")),
        str(status.get("message", "")),
    )


def parse_watch_line(line: bytes | str, decode: Callable[[Any], T]) -> WatchItem[T]:
    """Classify one watch line; raise the typed :class:`ApiStatusError` of an ERROR event."""
    try:
        event = json.loads(line)
        event_type, raw = event["type"], event["object"]
    except (ValueError, TypeError, KeyError) as exc:
        raise WatchProtocolError(f"not a watch event: {line[:200]!r}") from exc
    if event_type == "ERROR":
        raise parse_status(raw)
    if event_type == "BOOKMARK":
        try:
            return Bookmark(str(raw["metadata"]["resourceVersion"]))
        except (KeyError, TypeError) as exc:
            raise WatchProtocolError(f"BOOKMARK without a resourceVersion: {raw!r}") from exc
    if event_type not in ("ADDED", "MODIFIED", "DELETED"):
        raise WatchProtocolError(f"unknown watch event type {event_type!r}")
    return ObjectEvent(event_type, decode(raw))
