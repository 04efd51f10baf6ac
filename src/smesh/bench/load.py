"""Load generator and echo server run inside lab pods by the benchmark.

``python -m smesh.bench.load serve PORT`` echoes every byte back (the server app);
``cps HOST PORT SECONDS CONCURRENCY`` opens, echoes 64 bytes over, and closes connections as
fast as it can; ``idle HOST PORT COUNT`` holds COUNT connections open (each proven with one
echo) until its stdin closes. Results are one JSON line on stdout. The same code serves every
variant, so its own cost cancels out of the comparison.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sys
import time

MESSAGE = b"x" * 64


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, host="0.0.0.0", port=port, backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()


async def _exchange(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, MESSAGE)
        got = 0
        while got < len(MESSAGE):
            chunk = await loop.sock_recv(sock, 4096)
            if not chunk:
                break
            got += len(chunk)
    except BaseException:
        sock.close()
        raise
    if got < len(MESSAGE):
        sock.close()
        raise ConnectionError("closed before the echo came back")
    return sock


async def cps(host: str, port: int, seconds: float, concurrency: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    done = errors = 0
    deadline = time.monotonic() + seconds
    first_error = ""

    async def worker() -> None:
        nonlocal done, errors, first_error
        while time.monotonic() < deadline:
            try:
                (await _exchange(loop, host, port)).close()
                done += 1
            except OSError as exc:
                errors += 1
                first_error = first_error or str(exc)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    return {"connections": done, "seconds": elapsed, "errors": errors, "error": first_error}


async def idle(host: str, port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    held: list[socket.socket] = []
    for _ in range(0, count, 50):  # a few at a time: a burst of connects is not the point
        batch = min(50, count - len(held))
        held.extend(await asyncio.gather(*(_exchange(loop, host, port) for _ in range(batch))))
    print(json.dumps({"open": len(held)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the harness closes our stdin
    for sock in held:
        sock.close()


def main(argv: list[str]) -> int:
    _raise_fd_limit()
    command, *args = argv
    if command == "serve":
        asyncio.run(serve(int(args[0])))
    elif command == "cps":
        host, port, seconds, concurrency = args
        result = asyncio.run(cps(host, int(port), float(seconds), int(concurrency)))
        print(json.dumps(result), flush=True)
    elif command == "idle":
        asyncio.run(idle(args[0], int(args[1]), int(args[2])))
    else:
        print(f"unknown command {command!r}: use serve, cps or idle", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
