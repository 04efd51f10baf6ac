"""The CNI hand-off messages: both ends read what the other wrote, and bad input is named."""

from __future__ import annotations

import ipaddress

import pytest

from smesh.kubernetes import handoff


def test_request_round_trips_with_the_cni_names() -> None:
    request = handoff.SandboxRequest(
        container_id="c0ffee",
        netns="/var/run/netns/cni-1234",
        pod_namespace="shop",
        pod_name="web-7d4b9",
        pod_uid="8d2d6f2a-4f6e-4c1b-9a51-3c0e1f7b2a10",
        ips=(ipaddress.ip_address("198.18.1.10"), ipaddress.ip_address("fd00:198:18:1::a")),
    )
    wire = handoff.encode(request)
    assert b'"podNamespace":"shop"' in wire
    assert b'"containerId":"c0ffee"' in wire
    assert handoff.decode_request(wire) == request
    assert request.pod == "shop/web-7d4b9"
    assert handoff.Command.ADD.path == "/v1/sandboxes/add"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"containerId": ""}', "containerId"),
        (b'{"containerId": "x", "ips": ["not-an-ip"]}', "ips"),
        (b'{"containerId": "x", "color": "red"}', "color"),
        (b"not json", "invalid sandbox request"),
    ],
)
def test_bad_request_names_the_field(body: bytes, field: str) -> None:
    with pytest.raises(handoff.HandoffError, match=field):
        handoff.decode_request(body)


def test_reply_round_trips() -> None:
    reply = handoff.SandboxReply(pod="shop/web", meshed=True)
    assert handoff.decode_reply(handoff.encode(reply)) == reply
    with pytest.raises(handoff.HandoffError, match="smesh agent"):
        handoff.decode_reply(b'{"meshed": "perhaps"}')
