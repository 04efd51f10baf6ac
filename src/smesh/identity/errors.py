"""Errors of workload identity."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smesh.errors import SmeshError

if TYPE_CHECKING:
    from smesh.identity.spiffe import SpiffeId


class IdentityError(SmeshError):
    """Something about certificates or identities is wrong."""


class InvalidSpiffeId(IdentityError):
    """A string is not a SPIFFE ID smesh accepts."""


class PeerIdentityError(IdentityError):
    """A peer's certificate carries no usable SPIFFE ID."""


class IdentityMismatch(IdentityError):
    """A peer proved an identity, but not the one expected (impersonation refused)."""

    def __init__(self, expected: SpiffeId, actual: SpiffeId) -> None:
        super().__init__(f"peer is {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual


class CaError(IdentityError):
    """The certificate authority cannot do what was asked."""


class NotEntitled(IdentityError):
    """A node asked for an identity that it does not run."""


class SignerUnavailable(IdentityError):
    """The signing service could not be reached or refused the request."""
