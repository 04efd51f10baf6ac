"""Test peers run inside lab pods and nodes: direct servers and clients that report JSON.

``serve TAG PORT [--udp]``: answer every TCP connection (or UDP datagram) with
``DIRECT TAG``, on all IPv4 and IPv6 addresses.
``tcp HOST PORT``: connect, read one line, print what happened and what the socket saw.
``udp HOST PORT``: send a datagram, print the reply.
``loop HOST PORT COUNT``: COUNT short captured connections, each checked against the
listener's ``ORIG HOST PORT`` answer; prints a summary.
``hold HOST PORT COUNT SECONDS``: COUNT connections open at once for SECONDS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import threading
import time


def serve(tag: str, port: int, udp: bool) -> None:
    reply = f"DIRECT {tag}\n".encode()
    if udp:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        print("READY", flush=True)
        while True:
            _data, addr = sock.recvfrom(2048)
            sock.sendto(reply, addr)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.listen(128)
    print("READY", flush=True)
    while True:
        conn, _ = sock.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(reply)


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def tcp(host: str, port: int, bind_port: int, hold: float, family: int) -> dict[str, object]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(5)
    result: dict[str, object] = {}
    try:
        if bind_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", bind_port))
        # A scoped address (fe80::1%eth0) needs getaddrinfo's 4-tuple: with a 2-tuple,
        # Python sets sin6_scope_id to 0 and a link-local connect fails with EINVAL.
        sock.connect(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4])
        result["peername"] = list(sock.getpeername()[:2])
        result["sockname"] = list(sock.getsockname()[:2])
        if hold:
            time.sleep(hold)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        result.update(ok=True, reply=data.decode().strip())
    except OSError as exc:
        result.update(ok=False, error=exc.strerror or str(exc), errno=exc.errno)
    finally:
        sock.close()
    return result


def udp(host: str, port: int) -> dict[str, object]:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    sock.settimeout(3)
    try:
        sock.connect((host, port))
        sock.send(b"ping")
        return {"ok": True, "reply": sock.recv(2048).decode().strip()}
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or str(exc)}
    finally:
        sock.close()


def loop(host: str, port: int, count: int, workers: int) -> dict[str, object]:
    expected = f"ORIG {host} {port}\n".encode()
    linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT, no port exhaustion
    stats = {"ok": 0, "wrong": 0, "errors": 0}
    errors: dict[str, int] = {}
    lock = threading.Lock()

    def work(n: int) -> None:
        ok = wrong = failed = 0
        for _ in range(n):
            sock = socket.socket(family_of(host), socket.SOCK_STREAM)
            try:
                sock.settimeout(5)
                sock.connect((host, port))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
                if data == expected:
                    ok += 1
                else:
                    wrong += 1
            except OSError as exc:
                failed += 1
                with lock:
                    errors[exc.strerror or str(exc)] = errors.get(exc.strerror or "", 0) + 1
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.close()
        with lock:
            stats["ok"] += ok
            stats["wrong"] += wrong
            stats["errors"] += failed

    start = time.monotonic()
    threads = [
        threading.Thread(target=work, args=(count // workers + (i < count % workers),))
        for i in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {**stats, "error_kinds": errors, "seconds": round(time.monotonic() - start, 2)}


def hold(host: str, port: int, count: int, seconds: float) -> dict[str, object]:
    """Open *count* connections at once and keep them for *seconds*."""
    socks = []
    replies = []
    for _ in range(count):
        sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect((host, port))
        socks.append(sock)
    print("HOLDING", flush=True)
    time.sleep(seconds)
    for sock in socks:
        try:
            replies.append(sock.recv(4096).decode().strip())
        except OSError as exc:
            replies.append(f"error {exc.strerror}")
        sock.close()
    return {"ok": True, "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("tag")
    p.add_argument("port", type=int)
    p.add_argument("--udp", action="store_true")
    p = sub.add_parser("tcp")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--bind-port", type=int, default=0)
    p.add_argument("--hold", type=float, default=0.0)
    p.add_argument("--dual-stack", action="store_true", help="use an AF_INET6 socket")
    p = sub.add_parser("udp")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p = sub.add_parser("hold")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("seconds", type=float)
    p = sub.add_parser("loop")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    if args.cmd == "serve":
        serve(args.tag, args.port, args.udp)
        return
    if args.cmd == "tcp":
        family = socket.AF_INET6 if args.dual_stack else family_of(args.host)
        host = f"::ffff:{args.host}" if args.dual_stack and ":" not in args.host else args.host
        result = tcp(host, args.port, args.bind_port, args.hold, family)
    elif args.cmd == "udp":
        result = udp(args.host, args.port)
    elif args.cmd == "hold":
        result = hold(args.host, args.port, args.count, args.seconds)
    else:
        result = loop(args.host, args.port, args.count, args.workers)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
