"""A stand-in for the node agent as capture's owner: opens the node's capture, holds it.

``owner.py LAB NODE MODE``: attach the proxy cgroup and every pod of NODE, print READY,
then keep the handles open until killed — so a test can kill -9 it like a crashed agent.
"""

from __future__ import annotations

import signal
import sys

from smesh.capture import lab as capture_lab
from smesh.capture.backends import node_capture
from smesh.lab import api
from smesh.linux import cgroups


def main() -> None:
    lab, node, mode = sys.argv[1:4]
    _state, topo = api.load(lab)
    root = cgroups.v2_root()
    target = topo.node(node)
    capture = node_capture(mode, capture_lab.pin_dir(lab, node), capture_lab.lab_config())  # type: ignore[arg-type]
    capture.open()
    capture.attach_proxy(cgroups.create(root / target.agent_cgroup))
    for pod in topo.pods_on(node):
        capture.add_pod(
            f"{pod.namespace}/{pod.name}",
            pod.name,
            root / pod.cgroup,
            pod.netns,
            ipv4=pod.ip4,
            ipv6=pod.ip6,
        )
    print("READY", flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
