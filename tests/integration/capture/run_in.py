"""Run a command the way the agent runs its sockets: in a cgroup, inside a pod's netns.

``run_in.py CGROUP NETNS -- ARGV...``: join the cgroup first (a socket belongs to the
cgroup of the process that creates it), then enter the namespace, then exec.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from smesh.linux import cgroups, netns


def main() -> None:
    cgroup, name, sep, *argv = sys.argv[1:]
    if sep != "--" or not argv:
        sys.exit("usage: run_in.py CGROUP NETNS -- ARGV...")
    cgroups.create(Path(cgroup))
    cgroups.join(Path(cgroup))
    netns.enter(name)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
