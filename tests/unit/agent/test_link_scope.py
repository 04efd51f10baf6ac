"""The pod's link index for IPv6 link-local passthrough, asked over netlink in its netns."""

from __future__ import annotations

import socket

from smesh.agent.wiring import link_scope


class HereNamespace:
    """The test's own network namespace, as a pod's :class:`Namespace` handle is used."""

    name = "here"

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        return socket.socket(family, kind)


def test_link_scope_agrees_with_if_nameindex() -> None:
    others = [index for index, name in socket.if_nameindex() if name != "lo"]
    expected = others[0] if len(others) == 1 else 0
    assert link_scope(HereNamespace()) == expected  # type: ignore[arg-type]
