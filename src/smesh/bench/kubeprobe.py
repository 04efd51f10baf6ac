"""The client of the first-connect figure, run inside a meshed pod with ``lab exec``.

Reads ``NAME IP PORT`` lines on stdin, one per new server pod, as soon as the benchmark has
seen the pod's address in the API; for each, connects and sends ``GET /`` again and again
(every few milliseconds) until an HTTP reply comes, then prints one JSON line
``{"name", "ip", "ok_at", "attempts"}`` (``ok_at``: wall-clock seconds, the clock the
benchmark took the creation time with). Its connects are captured like any app's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

RETRY = 0.005  # seconds between attempts
GIVE_UP = 120.0


async def _attempt(ip: str, port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 5)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        return line.startswith(b"HTTP/") and b" 200 " in line
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def _probe(name: str, ip: str, port: int) -> None:
    attempts = 0
    deadline = time.monotonic() + GIVE_UP
    while time.monotonic() < deadline:
        attempts += 1
        if await _attempt(ip, port):
            print(
                json.dumps({"name": name, "ip": ip, "ok_at": time.time(), "attempts": attempts}),
                flush=True,
            )
            return
        await asyncio.sleep(RETRY)
    print(json.dumps({"name": name, "ip": ip, "error": "no reply", "attempts": attempts}))


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks = set()
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        name, ip, port = line.decode().split()
        task = asyncio.create_task(_probe(name, ip, int(port)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
