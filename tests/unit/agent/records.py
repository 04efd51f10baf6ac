"""Connection records as the data path leaves them, for the tests of what reads them: the
flow log, the edge counters and ``smesh flows``.

Both ends of one tunnelled connection, pod-1 (shop/client, 198.18.1.2) to pod-3
(web/server, 198.18.2.2) on 8080; a test names only the fields it is about.
"""

from __future__ import annotations

from typing import Any

from smesh.dataplane.records import ConnectionRecord

CLIENT = "spiffe://cluster.local/ns/shop/sa/client"  # pod-1's identity
SERVER = "spiffe://cluster.local/ns/web/sa/server"  # pod-3's


def outbound(**fields: Any) -> ConnectionRecord:
    """The source's record (pod-1's agent): *fields* replace what it would hold."""
    at_source: dict[str, Any] = {
        "direction": "outbound",
        "pod": "pod-1",
        "source": "127.0.0.1:40000",
        "identity": CLIENT,
        "peer_identity": SERVER,
        "destination": "198.18.2.2:8080",
        "destination_pod": "pod-3",
        "route": "tunnel",
    }
    return ConnectionRecord(**(at_source | fields))


def inbound(**fields: Any) -> ConnectionRecord:
    """The destination's record (pod-3's agent), allowed by rule ``allow-shop``."""
    at_destination: dict[str, Any] = {
        "direction": "inbound",
        "pod": "pod-3",
        "source": "198.18.1.2:51000",
        "identity": SERVER,
        "peer_identity": CLIENT,
        "destination": "198.18.2.2:8080",
        "route": "tunnel",
        "rule": "allow-shop",
    }
    return ConnectionRecord(**(at_destination | fields))
