"""Build the node's capture for a chosen mode (the agent's single entry point)."""

from __future__ import annotations

from pathlib import Path

from smesh.capture.config import CaptureConfig
from smesh.capture.node import Mode, NodeCapture


def node_capture(mode: Mode, pin_dir: Path, config: CaptureConfig | None = None) -> NodeCapture:
    """An unopened capture for one node; use it as a context manager or call ``open()``."""
    if mode == "ebpf":
        from smesh.capture.ebpf import EbpfCapture  # noqa: PLC0415 - loads libbpf lazily

        return EbpfCapture(pin_dir, config)
    from smesh.capture.nftables import NftablesCapture  # noqa: PLC0415

    return NftablesCapture(config)
