"""Errors of the Linux primitives."""

from smesh.errors import SmeshError


class LinuxError(SmeshError):
    """A kernel facility smesh relies on is missing or refused an operation."""


class PermissionMissing(LinuxError):
    """The process lacks the capabilities an operation needs."""

    exit_code = 77


class CgroupV2Missing(LinuxError):
    """No cgroup v2 hierarchy is mounted."""


class NetnsNotFound(LinuxError):
    """A named network namespace does not exist."""


class CommandFailed(LinuxError):
    """An external command (ip, nft, ...) exited non-zero."""
