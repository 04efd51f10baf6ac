"""Errors of capture: each says what failed and what to do about it."""

from __future__ import annotations

from smesh.errors import SmeshError


class CaptureError(SmeshError):
    """Capture could not be set up, inspected or removed as asked."""


class CaptureConfigError(CaptureError):
    """A capture setting is invalid; the message names the field."""

    exit_code = 2


class NoOriginalDestination(CaptureError):
    """The socket was not captured, or its original destination is gone (fail closed)."""


class BpfError(CaptureError):
    """libbpf or the kernel refused a BPF operation."""

    def __init__(self, message: str, errno: int = 0, log: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.log = log


class BpfObjectMissing(BpfError):
    """A compiled BPF object is not where smesh looks for it."""


class BtfMissing(BpfError):
    """An object or the kernel lacks the BTF that loading needs."""


class BpfPermissionDenied(BpfError):
    """The process may not load or attach BPF programs."""

    exit_code = 77


class VerifierRejected(BpfError):
    """The kernel's verifier refused a program; ``log`` holds its explanation."""


class NotSupported(BpfError):
    """The running kernel lacks a BPF feature capture needs."""


class CgroupNotV2(CaptureError):
    """A path given as a cgroup is not a cgroup v2 directory (or is the root)."""


class PinnedStateMismatch(BpfError):
    """Objects pinned by an earlier owner cannot be reused by this one."""


class BpffsMissing(CaptureError):
    """No BPF filesystem where the pins should go."""


class NftablesError(CaptureError):
    """The nftables fallback could not be set up or read."""


class TraceBusy(CaptureError):
    """Another `smesh trace` already reads the ring buffer (it has a single consumer)."""
