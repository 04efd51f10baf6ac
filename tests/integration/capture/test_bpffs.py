"""A machine that booted without /sys/fs/bpf mounted gets one mounted by the capture itself."""

from __future__ import annotations

import shutil
import subprocess
import sys

_CHILD = """
from pathlib import Path
from smesh.capture.system import ensure_bpffs
ensure_bpffs(Path("/sys/fs/bpf/smesh/some-lab/node-1"))
for line in Path("/proc/self/mounts").read_text().splitlines():
    fields = line.split()
    if fields[1] == "/sys/fs/bpf":
        print(fields[2])
"""


def test_a_missing_bpf_filesystem_is_mounted() -> None:
    # A private mount namespace: unmounting there leaves the machine's own mount alone.
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed"
    script = f"umount /sys/fs/bpf 2>/dev/null; exec {sys.executable} -c '{_CHILD}'"
    proc = subprocess.run(
        [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["bpf"]
