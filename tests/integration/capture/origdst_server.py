"""A stand-in for the agent's outbound listener: reports what original_destination() says.

Joins the given cgroup first (a socket belongs to the cgroup of the process that creates
it, and cgroup/getsockopt runs for the socket's cgroup), then enters the pod's network
namespace and listens on the listener addresses, exactly as the agent will. Every
accepted connection is answered with one line, ``ORIG ADDRESS PORT`` or
``NOORIG REASON``, and reported as a JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import time
from pathlib import Path

from smesh.capture import NoOriginalDestination, original_destination
from smesh.linux import cgroups, netns


def listen(family: int, host: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def answer(conn: socket.socket, quiet: bool) -> None:
    try:
        address, port = original_destination(conn)
        line = f"ORIG {address} {port}"
    except NoOriginalDestination as exc:
        line = f"NOORIG {exc}"
    try:
        peer = conn.getpeername()
        conn.sendall(line.encode() + b"\n")
    except OSError:
        peer = ("?", 0)
    finally:
        conn.close()
    if not quiet:
        print(json.dumps({"answer": line, "peer": list(peer[:2])}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cgroup", required=True, type=Path)
    parser.add_argument("--netns", required=True)
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--accept-delay", type=float, default=0.0)
    parser.add_argument("--quiet", action="store_true", help="no line per connection")
    parser.add_argument(
        "--then-cgroup", type=Path, help="move to this cgroup once listening, before accepting"
    )
    args = parser.parse_args()
    cgroups.create(args.cgroup)
    cgroups.join(args.cgroup)
    netns.enter(args.netns)
    selector = selectors.DefaultSelector()
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        selector.register(listen(family, host, args.port), selectors.EVENT_READ)
    if args.then_cgroup:
        cgroups.join(args.then_cgroup)
    print("READY", flush=True)
    while True:
        for key, _ in selector.select():
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            if args.accept_delay:
                time.sleep(args.accept_delay)
            while True:
                try:
                    conn, _peer = listener.accept()
                except BlockingIOError:
                    break
                conn.setblocking(True)
                answer(conn, args.quiet)


if __name__ == "__main__":
    main()
