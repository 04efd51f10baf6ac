"""Run the demo's actors in lab pods and watch the node-to-node link with tcpdump."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from smesh.errors import SmeshError


class DemoError(SmeshError):
    """A step of the demo could not run."""


def in_member(lab: str, member: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs *argv* inside a lab pod or node."""
    return [sys.executable, "-m", "smesh", "lab", "exec", "--name", lab, member, "--", *argv]


@dataclass
class Capture:
    """tcpdump on a node's fabric interface: what an attacker on the wire would see."""

    proc: subprocess.Popen[str]

    @classmethod
    def start(cls, lab: str, node: str, port_filter: str) -> Capture:
        argv = ["tcpdump", "-i", "eth0", "-nn", "-l", "-U", "-A", "-s", "0", port_filter]
        proc = subprocess.Popen(
            in_member(lab, node, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # "listening on eth0, ..." once the capture is armed
            if line.startswith("listening on"):
                return cls(proc)
            seen.append(line.strip())
        proc.kill()
        raise DemoError(f"tcpdump did not start on {node}: {' '.join(seen) or 'no output'}")

    def stop(self) -> str:
        time.sleep(0.3)  # let the last packets through the pipe
        self.proc.send_signal(signal.SIGINT)
        out, _err = self.proc.communicate(timeout=10)
        return out
