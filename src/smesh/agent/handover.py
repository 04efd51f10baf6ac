"""A planned hand-over between two agent processes of one node (docs/agent.md, "Hand-over").

The running agent serves a Unix socket (``handoverSocket``, 0600 in a 0700 directory;
only root or the agent's own user may connect, checked with ``SO_PEERCRED`` both ways). A
new agent starting while it runs connects there first, and the old one passes it every
listening socket it has — each pod's outbound and inbound listeners, both admin listeners, the
CNI hand-off, this socket itself — with ``SCM_RIGHTS``: the very sockets, so a connection
queued on one is accepted by the new agent and no connect is ever refused. Then:

1. old → new: ``sockets`` messages (each with its descriptors, at most
   :data:`MAX_FDS_PER_MESSAGE`), then ``offer-end`` (how many in all, the old pid);
2. new: checks them, sets up what it needs before it can serve (certificates, policy);
3. new → old: ``ack``. Until then nothing changed: if the new agent fails or goes away,
   the old one serves on as if nothing happened;
4. old: stops accepting (closes its copies), tells its tunnel peers GOAWAY, releases
   capture (closes its handles; the pinned links stay attached), → new: ``released``;
5. new: opens capture (takes the pins over), serves on the adopted sockets, reconciles.
   The old agent serves its open connections until they end, and exits.

Each message is a u32 length and a JSON object with ``type`` and ``version``
(:data:`VERSION`); descriptors ride on the first byte of their ``sockets`` message. This
module's :class:`Decoder` and :class:`OfferReader` are the protocol without I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smesh.errors import SmeshError

log = logging.getLogger("smesh.agent")

VERSION = 1
MAX_MESSAGE = 1 << 20  # a node's worth of socket entries is tens of kilobytes
MAX_FDS_PER_MESSAGE = 200  # the kernel takes at most 253 (SCM_MAX_FD) per message
MAX_SOCKETS = 16384  # a node's pods (3 each) and its own listeners, with room to spare
KINDS = frozenset({"outbound", "inbound", "admin", "handover", "cni"})
NODE = ""  # the "pod" of a node-level listener
_LENGTH = struct.Struct("!I")
#: How long the old agent waits for the new one's ``ack`` (its set-up before serving).
ACK_TIMEOUT = 60.0
#: How long either side waits for the other's next message otherwise.
STEP_TIMEOUT = 10.0


class HandoverError(SmeshError):
    """The hand-over between two agents failed; what changed says the message."""


class HandoverRefused(HandoverError):
    """A process that may not take part (neither root nor the agent's user) asked."""


@dataclass(frozen=True, order=True)
class SocketKey:
    """What a passed listening socket is: whose (a pod's key, or :data:`NODE`), which
    listener, and the address it is bound to (``ip:port``, ``[ip6]:port``, or a path)."""

    pod: str
    kind: str
    address: str

    def as_dict(self) -> dict[str, str]:
        return {"pod": self.pod, "kind": self.kind, "address": self.address}


def address_of(sock: socket.socket) -> str:
    """The address key of a bound socket, as :func:`address` writes it."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return name if isinstance(name, str) else bytes(name).decode(errors="replace")
    return address(name[0], name[1])


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- framing (sans-IO) -------------------------------------------------------------------


def encode(doc: dict[str, Any]) -> bytes:
    body = json.dumps({"version": VERSION, **doc}, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise HandoverError(f"hand-over message of {len(body)} bytes (at most {MAX_MESSAGE})")
    return _LENGTH.pack(len(body)) + body


class Decoder:
    """Cuts the byte stream into messages: JSON objects, each with its type."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        out: list[dict[str, Any]] = []
        while len(self._buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(self._buffer)
            if size > MAX_MESSAGE:
                raise HandoverError(f"hand-over message of {size} bytes (at most {MAX_MESSAGE})")
            if len(self._buffer) < _LENGTH.size + size:
                break
            body = bytes(self._buffer[_LENGTH.size : _LENGTH.size + size])
            del self._buffer[: _LENGTH.size + size]
            out.append(_message(body))
        return out


def _message(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise HandoverError(f"hand-over message is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise HandoverError("hand-over message is not an object with a type")
    version = doc.get("version")
    if version != VERSION:
        raise HandoverError(
            f"the other agent speaks hand-over protocol version {version!r}, this one "
            f"{VERSION}: stop the running agent first (its pods fail closed meanwhile)"
        )
    return doc


def offer_messages(keys: list[SocketKey], pid: int) -> list[tuple[bytes, int]]:
    """The old agent's offer: (message, how many descriptors ride on it) in order."""
    out: list[tuple[bytes, int]] = []
    for start in range(0, len(keys), MAX_FDS_PER_MESSAGE):
        batch = keys[start : start + MAX_FDS_PER_MESSAGE]
        out.append(
            (encode({"type": "sockets", "sockets": [k.as_dict() for k in batch]}), len(batch))
        )
    out.append((encode({"type": "offer-end", "count": len(keys), "pid": pid}), 0))
    return out


@dataclass
class Offer:
    pid: int
    keys: list[SocketKey]


class OfferReader:
    """The new agent's side of the offer: the descriptors that came must match the
    ``sockets`` messages one for one, in order, and ``offer-end`` must count them all."""

    def __init__(self) -> None:
        self.keys: list[SocketKey] = []
        self._unclaimed = 0  # descriptors received that no message has named yet

    def descriptors(self, count: int) -> None:
        """*count* descriptors came (they ride on their message's first byte, so they
        always come before, or with, the end of the message naming them)."""
        self._unclaimed += count
        if len(self.keys) + self._unclaimed > MAX_SOCKETS:
            raise HandoverError(f"more than {MAX_SOCKETS} sockets offered")

    def take(self, doc: dict[str, Any]) -> Offer | None:
        """One message; the whole offer once it ended, else None. Raises
        :class:`HandoverError` on anything malformed."""
        kind = doc["type"]
        if kind == "refuse":
            raise HandoverError(f"the running agent refused the hand-over: {doc.get('reason')}")
        if kind == "sockets":
            entries = doc.get("sockets")
            if not isinstance(entries, list) or not 0 < len(entries) <= self._unclaimed:
                named = len(entries) if isinstance(entries, list) else 0
                raise HandoverError(
                    f"a sockets message names {named} sockets, {self._unclaimed} descriptors came"
                )
            self._unclaimed -= len(entries)
            self.keys += [_key(entry) for entry in entries]
            return None
        if kind != "offer-end":
            raise HandoverError(f"unexpected {kind!r} message during the offer")
        count, pid = doc.get("count"), doc.get("pid")
        if self._unclaimed:
            raise HandoverError(f"{self._unclaimed} descriptors came that no message names")
        if count != len(self.keys) or not isinstance(pid, int) or pid <= 0:
            raise HandoverError(f"offer-end counts {count!r} sockets, {len(self.keys)} came")
        if len(set(self.keys)) != len(self.keys):
            raise HandoverError("a socket key is offered twice")
        return Offer(pid, list(self.keys))


def _key(entry: object) -> SocketKey:
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(f), str) for f in ("pod", "kind", "address")
    ):
        raise HandoverError(f"malformed socket entry {entry!r}")
    if entry["kind"] not in KINDS:
        raise HandoverError(f"unknown socket kind {entry['kind']!r}")
    return SocketKey(entry["pod"], entry["kind"], entry["address"])


def expect(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    if doc["type"] == "refuse":
        raise HandoverError(f"the other agent refused the hand-over: {doc.get('reason')}")
    if doc["type"] != kind:
        raise HandoverError(f"expected a {kind!r} message, got {doc['type']!r}")
    return doc


# -- peers ---------------------------------------------------------------------------------


def check_peer(conn: socket.socket) -> int:
    """The peer's pid, if it runs as root or as this process's user; else raise."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    if uid not in (0, os.geteuid()):
        raise HandoverRefused(f"process {pid} (uid {uid}) may not take part in a hand-over")
    return int(pid)


def _listening(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


# -- the new agent ---------------------------------------------------------------------------


class Incoming:
    """What a new agent received: the sockets by key; :meth:`acknowledge` completes it."""

    def __init__(self, conn: socket.socket, offer: Offer, sockets: dict[SocketKey, socket.socket]):
        self._conn = conn
        self._decoder = Decoder()
        self.pid = offer.pid
        self.sockets = sockets

    def take(self, key: SocketKey) -> socket.socket | None:
        return self.sockets.pop(key, None)

    def acknowledge(self, pid: int) -> None:
        """Blocking: tell the old agent to let go, and wait until it has (capture released)."""
        conn = self._conn
        try:
            conn.settimeout(STEP_TIMEOUT)
            conn.sendall(encode({"type": "ack", "pid": pid}))
            while True:
                data = conn.recv(65536)
                if not data:  # it died after the ack: its capture lock went with it
                    log.warning("the old agent (pid %d) went away before it answered", self.pid)
                    return
                for doc in self._decoder.feed(data):
                    expect(doc, "released")
                    return
        except OSError as exc:
            raise HandoverError(f"the old agent (pid {self.pid}) did not release: {exc}") from exc
        finally:
            conn.close()

    def refuse(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            self._conn.sendall(encode({"type": "refuse", "reason": reason}))
        self.close()

    def close(self) -> None:
        self._conn.close()
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()


def receive(path: Path, timeout: float = STEP_TIMEOUT) -> Incoming | None:
    """Blocking: take the listening sockets of the agent serving *path*; None if none does
    (no socket, or a stale one a dead agent left)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    conn.settimeout(timeout)
    try:
        conn.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None
    except OSError as exc:
        conn.close()
        raise HandoverError(f"cannot reach the running agent at {path}: {exc}") from exc
    received: list[socket.socket] = []
    try:
        check_peer(conn)
        offer, sockets = _take_offer(conn, received)
    except (OSError, HandoverError) as exc:
        for sock in received:
            sock.close()
        with contextlib.suppress(OSError):
            conn.sendall(encode({"type": "refuse", "reason": str(exc)}))
        conn.close()
        if isinstance(exc, HandoverError):
            raise
        raise HandoverError(f"the hand-over from the running agent failed: {exc}") from exc
    log.info(
        "received %d listening sockets from the running agent",
        len(sockets),
        extra={"fields": {"old_pid": offer.pid}},
    )
    return Incoming(conn, offer, sockets)


def _take_offer(
    conn: socket.socket, received: list[socket.socket]
) -> tuple[Offer, dict[SocketKey, socket.socket]]:
    """Read the offer; every descriptor that came is in *received* (closed on failure)."""
    decoder, reader = Decoder(), OfferReader()
    offer: Offer | None = None
    while offer is None:
        data, fds, _flags, _addr = socket.recv_fds(conn, 65536, MAX_FDS_PER_MESSAGE)
        received += [socket.socket(fileno=fd) for fd in fds]
        if not data:
            raise HandoverError("the running agent closed the hand-over (busy?)")
        reader.descriptors(len(fds))
        for doc in decoder.feed(data):
            if offer is not None:
                raise HandoverError(f"a {doc['type']!r} message after the offer's end")
            offer = reader.take(doc)
    if len(received) != len(offer.keys):
        raise HandoverError(f"{len(received)} descriptors for {len(offer.keys)} sockets")
    sockets = dict(zip(offer.keys, received, strict=True))
    for key, sock in sockets.items():
        if not _listening(sock) or address_of(sock) != key.address:
            raise HandoverError(f"the socket passed as {key} is not a listener there")
    return offer, sockets


# -- the running agent -----------------------------------------------------------------------


Listeners = Callable[[], list[tuple[SocketKey, socket.socket]]]


class HandoverServer:
    """The running agent's side, one hand-over at a time: ``on_ack`` is called once the new
    agent acknowledged, to stop accepting and release capture; it is final."""

    def __init__(
        self,
        path: Path,
        listeners: Listeners,
        on_ack: Callable[[int], None],
        on_result: Callable[[str], None] = lambda result: None,
    ) -> None:
        self.path = path
        self._listeners = listeners
        self._on_ack = on_ack
        self._on_result = on_result  # "failed" or "refused", for the metric
        self.sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.handed_over = False
        self._busy = False  # a hand-over under way: from its accept to its outcome
        self._closing = False  # settle(): take no new one

    def start(self, inherited: socket.socket | None = None) -> None:
        if inherited is not None:
            sock = inherited
        else:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.unlink(missing_ok=True)  # receive() found nobody serving it
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            old = os.umask(0o177)  # born 0600: no window where others may connect
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old)
            sock.listen(8)
        sock.setblocking(False)
        self.sock = sock
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="hand-over")

    def listening(self) -> socket.socket | None:
        return self.sock

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.sock is not None
        while not (self.handed_over or self._closing):
            conn, _ = await loop.sock_accept(self.sock)
            self._busy = True
            try:
                await self._hand_over(conn)
            except HandoverRefused as exc:
                self._on_result("refused")
                log.warning("refused a hand-over: %s", exc)
            except Exception as exc:  # nothing changed: serve on
                self._on_result("failed")
                log.error("hand-over to a new agent failed; serving on: %s", exc)
            finally:
                self._busy = False
                conn.close()

    async def _hand_over(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pid = check_peer(conn)
        log.info("a new agent (pid %d) asks for the node", pid)
        pairs = self._listeners()
        keys = [key for key, _sock in pairs]
        fds = [sock.fileno() for _key, sock in pairs]
        conn.settimeout(STEP_TIMEOUT)  # a few kilobytes to a local reader
        sent = 0
        for message, count in offer_messages(keys, os.getpid()):
            if count:
                socket.send_fds(conn, [message], fds[sent : sent + count])
            else:
                conn.sendall(message)
            sent += count
        conn.setblocking(False)
        decoder = Decoder()
        async with asyncio.timeout(ACK_TIMEOUT):
            while True:
                data = await loop.sock_recv(conn, 65536)
                if not data:
                    raise HandoverError(f"the new agent (pid {pid}) went away before its ack")
                docs = decoder.feed(data)
                if docs:
                    expect(docs[0], "ack")
                    break
        self.handed_over = True
        if self.sock is not None:  # the new agent serves it now
            self.sock.close()
            self.sock = None
        self._on_ack(pid)  # stop accepting, release capture: final from here
        conn.settimeout(STEP_TIMEOUT)
        with contextlib.suppress(OSError):  # gone: its capture open will wait for the lock
            conn.sendall(encode({"type": "released"}))
        log.info("handed the node over to the new agent (pid %d)", pid)

    async def settle(self) -> None:
        """Take no new hand-over, and let one under way reach its outcome first.

        A stop that came while a new agent is taking over (a SIGTERM between its offer and
        its ack) must not pull the sockets and capture from under it: the hand-over either
        completes (``handed_over``: the agent then lingers instead of stopping) or fails
        (the agent stops as planned), each within the protocol's own timeouts."""
        self._closing = True
        task = self._task
        if task is None or task.done():
            return
        if self._busy:
            await asyncio.wait({task}, timeout=ACK_TIMEOUT + 2 * STEP_TIMEOUT)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def close(self) -> None:
        """Stop serving (this process's copy; a new agent may hold the socket now)."""
        if self._task is not None:
            self._task.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
