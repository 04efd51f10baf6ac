"""The two ends of the Service round-trip figures, run inside meshed lab pods.

``serve PORT``: an echo server (the server pod's container command).

``client POD_IP CLUSTER_IP PORT BATCHES ROUNDS CONNECTS`` (through ``lab exec`` in the client
pod): the same server addressed two ways, its pod IP and a ClusterIP in front of it, in
alternating batches so that whatever else loads the machine loads both alike. Per batch and
address: ROUNDS request/echo round trips of :data:`MESSAGE` bytes on one long-lived connection
(the ClusterIP is resolved once, at its connect), then CONNECTS new connections of one round
trip each (connect + round trip: where resolving a ClusterIP would cost). Prints one JSON line
``{"done": true, "result": {"pod": {"rtt_us": [...], "connect_us": [...]}, "svc": {...}}}``,
or ``{"done": true, "error": ...}``. Its connects are captured like any app's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

MESSAGE = 64  # bytes each way: a small request, as an RPC's
WARM_UP = 200  # round trips per connection before any is counted
GIVE_UP = 60.0  # seconds for the first round trip of each address


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(_echo, host=None, port=port, reuse_address=True)
    async with server:
        await server.serve_forever()


def _connect(ip: str, port: int) -> socket.socket:
    sock = socket.create_connection((ip, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _round_trip(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(payload)
    got = 0
    while got < len(payload):
        chunk = sock.recv(len(payload) - got)
        if not chunk:
            raise ConnectionError("the echo server closed the connection")
        got += len(chunk)


def _first(ip: str, port: int, payload: bytes) -> socket.socket:
    """A connection whose first round trip worked (the Service may still be on its way to
    the agent's table), retried until :data:`GIVE_UP`."""
    deadline = time.monotonic() + GIVE_UP
    while True:
        try:
            sock = _connect(ip, port)
            _round_trip(sock, payload)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise ConnectionError(f"no round trip to {ip}:{port}: {exc}") from exc
            time.sleep(0.1)
        else:
            return sock


def client(
    pod_ip: str, cluster_ip: str, port: int, *, batches: int, rounds: int, connects: int
) -> None:
    payload = b"x" * MESSAGE
    targets = {"pod": pod_ip, "svc": cluster_ip}
    held = {}
    for key, ip in targets.items():
        sock = _first(ip, port, payload)
        for _ in range(WARM_UP):
            _round_trip(sock, payload)
        held[key] = sock
    samples: dict[str, dict[str, list[float]]] = {
        key: {"rtt_us": [], "connect_us": []} for key in targets
    }
    clock = time.perf_counter_ns
    for batch in range(batches):
        order = list(targets) if batch % 2 == 0 else list(reversed(targets))
        for key in order:
            sock, out = held[key], samples[key]["rtt_us"]
            for _ in range(rounds):
                start = clock()
                _round_trip(sock, payload)
                out.append((clock() - start) / 1000)
        for key in order:
            out = samples[key]["connect_us"]
            for _ in range(connects):
                start = clock()
                fresh = _connect(targets[key], port)
                try:
                    _round_trip(fresh, payload)
                    out.append((clock() - start) / 1000)
                finally:
                    fresh.close()
    for sock in held.values():
        sock.close()
    print(json.dumps({"done": True, "result": samples}), flush=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"] and len(argv) == 2:
        asyncio.run(serve(int(argv[1])))
        return 0
    if argv[:1] == ["client"] and len(argv) == 7:
        pod_ip, cluster_ip, port, batches, rounds, connects = argv[1:]
        try:
            client(
                pod_ip,
                cluster_ip,
                int(port),
                batches=int(batches),
                rounds=int(rounds),
                connects=int(connects),
            )
        except OSError as exc:
            print(json.dumps({"done": True, "error": str(exc)}), flush=True)
            return 1
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
