"""What the data plane reports: one record per connection, and an observer for metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ConnectionRecord:
    """One tunnelled (or passed-through) connection: the access-log line, in the making."""

    direction: str  # outbound | inbound
    pod: str
    source: str  # "ip:port" of the app side
    identity: str = ""  # this pod's SPIFFE ID
    peer_identity: str = ""  # the other side's SPIFFE ID (once proven)
    destination: str = ""  # "ip:port" the app asked for
    destination_pod: str = ""
    route: str = ""  # tunnel | passthrough | deny | refuse
    service: str = ""  # "namespace/name:port" when the app dialled a Service's ClusterIP
    endpoint: str = ""  # "ip:port" of the Service's endpoint the connection went to
    result: str = "open"  # ok | refused | denied | reset | timeout | error | open
    detail: str = ""
    rule: str = ""
    bytes_from_app: int = 0  # read from this side's app socket
    bytes_to_app: int = 0  # written to this side's app socket
    resumed: bool = False
    request_id: str = ""  # the same on both sides of a tunnelled connection
    started: float = field(default_factory=time.time)
    duration: float = 0.0

    def finish(self, result: str, detail: str = "") -> None:
        if self.result == "open":
            self.result = result
            self.detail = detail
            self.duration = time.time() - self.started

    @property
    def mtls(self) -> bool:
        """Carried over mutual TLS: the peer proved its identity in a handshake."""
        return bool(self.peer_identity)

    @property
    def bytes_sent(self) -> int:
        """Source app → destination app (the outbound side's app is the source)."""
        return self.bytes_from_app if self.direction == "outbound" else self.bytes_to_app

    @property
    def bytes_received(self) -> int:
        """Destination app → source app."""
        return self.bytes_to_app if self.direction == "outbound" else self.bytes_from_app

    def as_dict(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "pod": self.pod,
            "identity": self.identity,
            "source": self.source,
            "destination": self.destination,
            "destination_pod": self.destination_pod,
            "service": self.service,
            "endpoint": self.endpoint,
            "peer_identity": self.peer_identity,
            "route": self.route,
            "result": self.result,
            "detail": self.detail,
            "rule": self.rule,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "resumed": self.resumed,
            "request_id": self.request_id,
            "duration_s": round(self.duration or time.time() - self.started, 6),
        }


class Observer(Protocol):
    """Metrics and logs hook in here; the data plane knows nothing of Prometheus."""

    def opened(self, record: ConnectionRecord) -> None: ...

    def closed(self, record: ConnectionRecord) -> None: ...

    def handshake(self, side: str, seconds: float, resumed: bool) -> None: ...

    def tunnel_ready(self, seconds: float) -> None: ...

    def carriers(self, side: str, delta: int) -> None:
        """A pooled tunnel connection (carrier of streams) opened (+1) or closed (-1)."""

    def turned_away(self, direction: str, reason: str) -> None:
        """A pod's listener could not take a connection: reset at the pod's cap
        (``at_cap``), or left in the backlog because accept failed (``accept_failed``)."""


class NullObserver:
    def opened(self, record: ConnectionRecord) -> None:
        pass

    def closed(self, record: ConnectionRecord) -> None:
        pass

    def handshake(self, side: str, seconds: float, resumed: bool) -> None:
        pass

    def tunnel_ready(self, seconds: float) -> None:
        pass

    def carriers(self, side: str, delta: int) -> None:
        pass

    def turned_away(self, direction: str, reason: str) -> None:
        pass
