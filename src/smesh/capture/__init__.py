"""Capture: send a meshed pod's outbound TCP connects to the node proxy, and tell the proxy
where each one was going.

eBPF (cgroup/connect4+6, sockops, cgroup/getsockopt, loaded through libbpf) is the main
mode; nftables REDIRECT in each pod's namespace is the fallback. Both answer the proxy's
``SO_ORIGINAL_DST`` the same way, so :func:`original_destination` works for either.
"""

from smesh.capture.config import CaptureConfig
from smesh.capture.errors import CaptureConfigError, CaptureError, NoOriginalDestination
from smesh.capture.node import (
    CapturedPod,
    ModeChoice,
    NodeCapture,
    Occupancy,
    PodCounters,
    select_mode,
)
from smesh.capture.origdst import original_destination

__all__ = [
    "CaptureConfig",
    "CaptureConfigError",
    "CaptureError",
    "CapturedPod",
    "ModeChoice",
    "NoOriginalDestination",
    "NodeCapture",
    "Occupancy",
    "PodCounters",
    "original_destination",
    "select_mode",
]
