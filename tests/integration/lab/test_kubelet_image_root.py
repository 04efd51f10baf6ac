"""The checkout standing in for a lab container's image stays visible under its volumes.

A chart's emptyDir at /tmp must not hide a checkout cloned into /tmp/... (CI's clone): the
lab kubelet holds the checkout open before the container's mounts and binds it back, read
only, after them. Run for real: unshare, mount, a private mount namespace.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from smesh.lab import kubelet_exec
from smesh.lab.kubelet_volumes import Mount


def test_a_volume_over_the_checkouts_parent_does_not_hide_it(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    checkout = parent / "checkout"
    checkout.mkdir(parents=True)
    (checkout / "smesh").write_text("#!/bin/sh\necho from the image\n")
    (checkout / "smesh").chmod(0o755)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    mounts = [Mount(str(empty), str(parent), read_only=False)]
    who = kubelet_exec.Identity(frozenset({"SYS_ADMIN"}))
    before = Path("/proc/self/mountinfo").read_text()

    def run(image_root: str | None) -> subprocess.CompletedProcess[str]:
        argv = kubelet_exec.command(
            ["sh", "-c", f"{checkout}/smesh; touch {checkout}/x 2>&1 || true"],
            mounts,
            who,
            image_root,
        )
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)

    hidden = run(None)
    assert "from the image" not in hidden.stdout, hidden  # without it the volume hides it
    assert "not found" in hidden.stderr
    kept = run(str(checkout))
    assert kept.returncode == 0, kept.stderr
    assert "from the image" in kept.stdout
    assert "Read-only file system" in kept.stdout  # bound back read-only, as an image's files
    assert not (checkout / "x").exists()
    assert Path("/proc/self/mountinfo").read_text() == before  # nothing leaked to the host
    assert os.listdir(empty) == ["checkout"]  # the mount point, inside the pod's own volume
