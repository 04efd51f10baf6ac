"""Errors of the tunnel protocol, saying whose fault it was (as h11 does)."""

from smesh.errors import SmeshError


class TunnelError(SmeshError):
    """The tunnel could not be set up."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status  # what the inbound side answers


class RemoteProtocolError(TunnelError):
    """The peer broke the protocol (malformed, oversized or unexpected input)."""


class LocalProtocolError(TunnelError):
    """This side was asked to do something the protocol does not allow."""
