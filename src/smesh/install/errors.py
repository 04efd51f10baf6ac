"""Errors of the installer and of `smesh install check`."""

from __future__ import annotations

from smesh.errors import SmeshError


class InstallError(SmeshError):
    """The node or cluster is not in a state smesh can be installed into; says what to do."""

    exit_code = 2


class CniConfigError(InstallError):
    """The node's CNI network configuration cannot take smesh-cni (unreadable, not a list)."""


class AccessDenied(InstallError):
    """The API server refused the credentials (401) or the request (403)."""
