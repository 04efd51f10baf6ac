"""Where a lab node's agent writes its log, and reading it as ``tail [-f]`` does.

A process agent (``lab up``, ``--install processes``) logs to ``NODE/agent.log`` in the
lab's state directory. A chart lab's agent is the DaemonSet's pod, and the lab kubelet
writes each container's output to ``nodes/NODE/pods/UID/CONTAINER.log`` (docs/lab.md): the
agent container's file of the node's agent pod is that agent's log, as ``kubectl logs``
would show it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from smesh.lab import api
from smesh.lab.errors import LabError

AGENT_CONTAINER = "agent"  # the agent DaemonSet's container (deploy/helm)


def agent_log(name: str, node_name: str) -> Path:
    """The log file of *node_name*'s agent in lab *name* (a chart lab: its newest agent pod's)."""
    lab, topo = api.load(name)
    node = topo.node(node_name)  # an unknown node: the error names the nodes
    if not topo.mesh:
        raise LabError(f"lab {name!r} runs without the mesh (--no-mesh): it has no agents")
    if lab.settings.get("install") != "chart":
        from smesh.lab import agents  # noqa: PLC0415

        path = agents.node_dir(name, node.name) / "agent.log"
        if not path.exists():
            raise LabError(f"the agent of {node.name} has written no log yet ({path})")
        return path
    from smesh.lab import kubelab, kubepaths  # noqa: PLC0415
    from smesh.lab.install import AGENT_POD_PREFIX, NAMESPACE  # noqa: PLC0415

    pods = [
        found.sandbox
        for found in kubelab.sandboxes(topo)
        if found.node == node.name
        and found.sandbox.namespace == NAMESPACE
        and found.sandbox.name.startswith(AGENT_POD_PREFIX)
        and not found.sandbox.released
    ]
    if not pods:
        raise LabError(
            f"{node.name} of lab {name!r} runs no agent pod (yet); see `smesh lab status "
            f"--lab {name}`"
        )
    newest = max(pods, key=lambda sandbox: sandbox.created_at)
    path = kubepaths.pods_dir(name, node.name) / newest.uid / f"{AGENT_CONTAINER}.log"
    if not path.exists():
        raise LabError(
            f"the agent pod {NAMESPACE}/{newest.name} on {node.name} has written no log yet "
            f"({path})"
        )
    return path


def copy(
    path: Path,
    out: BinaryIO,
    *,
    follow: bool = False,
    poll: float = 0.2,
    settle: float = 1.0,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Write *path* to *out*; with *follow*, then what is appended, until the file is gone
    (``lab down`` removed it) or *stop* says so.

    Whole lines only: an agent logs JSON lines, and a line it is still writing, cut where
    its buffer ended, would break the reader's parser (``| jq``). Such a last line is held
    until its newline comes, for at most *settle* seconds (without *follow*: in all), after
    which it is written as it is: the cut last line of an agent that died.
    """
    held = b""
    waited = 0.0  # without follow: since the end was first reached; with: since data last came
    with path.open("rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                data = held + chunk
                whole = data.rfind(b"\n") + 1
                out.write(data[:whole])
                held = data[whole:]
                if follow:
                    waited = 0.0
                continue
            if held and waited >= settle:  # a line its writer did not finish
                out.write(held)
                held = b""
            out.flush()
            if stop() or not path.exists() or not (follow or held):
                break
            time.sleep(poll)
            waited += poll
    if held and not stop():
        out.write(held)
        out.flush()
