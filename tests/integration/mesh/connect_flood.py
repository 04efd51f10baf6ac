"""Runs in a pod: open COUNT connections to HOST:PORT at once and hold them, as an attacker would.

``flood.py HOST PORT COUNT HOLD FIRST_PORT``: non-blocking connects as fast as they go
(bounded by COUNT and 60 s) from source ports FIRST_PORT, FIRST_PORT + 1, ... (the kernel's
own search for a free ephemeral port slows to a crawl with tens of thousands in use),
every socket kept open until all are attempted and then for HOLD seconds more; prints one
JSON line: attempted, failed at once, and how many the server had closed.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import sys
import time


def main() -> None:
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    hold, first_port = float(sys.argv[4]), int(sys.argv[5])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # COUNT must fit below it
    socks: list[socket.socket] = []
    failed = 0
    deadline = time.monotonic() + 60
    while len(socks) + failed < count and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind(("0.0.0.0", first_port + len(socks) + failed))
        except OSError:
            failed += 1
            sock.close()
            continue
        if sock.connect_ex((host, port)) not in (0, 115):  # EINPROGRESS
            failed += 1
            sock.close()
            continue
        socks.append(sock)
    time.sleep(hold)
    closed = 0
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLIN)
    for _fd, events in poller.poll(0):
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
            closed += 1
    print(json.dumps({"attempted": len(socks) + failed, "failed": failed, "closed": closed}))
    for sock in socks:
        sock.close()


if __name__ == "__main__":
    main()
