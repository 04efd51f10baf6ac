"""Setting one connection up, each direction: from accept to an established relay.

Every failure ends the same way: the app side is reset (so the app sees ECONNRESET, never
a clean but empty answer), the record says why, and the listener keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
from typing import Protocol

from smesh.dataplane.context import IPAddress, PodConfig, Services
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Relay
from smesh.dataplane.sockets import abort, endpoint, family_of, prepare
from smesh.dataplane.splice import Splice
from smesh.dataplane.tlsio import TlsSession
from smesh.errors import SmeshError
from smesh.identity.errors import IdentityError
from smesh.identity.spiffe import SpiffeId
from smesh.identity.tls import peer_identity, verify_peer
from smesh.tunnel import (
    ClientHandshake,
    Established,
    Refused,
    RemoteProtocolError,
    ServerHandshake,
    TunnelRequest,
)
from smesh.tunnel.connect import authority, response

log = logging.getLogger("smesh.dataplane")

REFUSAL_RESULTS = {403: "denied", 502: "refused", 504: "timeout"}


class Tracked(Protocol):
    """The endpoint's entry for one connection: its record, and where the relay goes."""

    record: ConnectionRecord
    active: Relay | Splice | None

    def relay_done(self, relay: Relay | Splice) -> None: ...


def _fields(record: ConnectionRecord) -> dict[str, dict[str, object]]:
    return {"fields": record.as_dict()}


class ConnectFailed(Exception):
    def __init__(self, result: str, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


async def _connect(svc: Services, pod: PodConfig, ip: IPAddress, port: int) -> socket.socket:
    """A socket made inside the pod's namespace, connected to ip:port."""
    sock = prepare(pod.sockets.socket(family_of(ip), socket.SOCK_STREAM))
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, (str(ip), port)),
            svc.limits.connect_timeout,
        )
    except TimeoutError:
        sock.close()
        raise ConnectFailed("timeout", f"connecting to {authority(ip, port)} timed out") from None
    except OSError as exc:
        sock.close()
        result = "refused" if isinstance(exc, ConnectionRefusedError) else "error"
        raise ConnectFailed(
            result, f"connecting to {authority(ip, port)}: {exc.strerror or exc}"
        ) from None
    return sock


async def outbound(pod: PodConfig, svc: Services, app: socket.socket, tracked: Tracked) -> None:
    """A captured connect: find where it was going, then tunnel, pass through or refuse."""
    record = tracked.record
    upstream: socket.socket | None = None
    started = asyncio.get_running_loop().time()
    try:
        dst_ip, dst_port = svc.original_destination(app)
        record.destination = authority(dst_ip, dst_port)
        route = svc.route(dst_ip, dst_port)
        record.route, record.destination_pod = route.kind, route.workload
        if route.kind == "deny":
            record.finish("denied", "destination is outside the mesh and passthrough is off")
            return
        port = pod.tunnel_port if route.kind == "tunnel" else dst_port
        upstream = await _connect(svc, pod, dst_ip, port)
        if route.kind == "passthrough":
            splice = Splice(app, upstream, record, svc.scratch, tracked.relay_done)
            tracked.active = splice
            splice.start()
            return
        assert route.identity is not None
        await _tunnel(
            pod, svc, app, upstream, tracked, expected=route.identity, target=(dst_ip, dst_port)
        )
        if tracked.active is not None:
            svc.observer.tunnel_ready(asyncio.get_running_loop().time() - started)
    except ConnectFailed as exc:
        record.finish(exc.result, exc.detail)
    except TimeoutError:
        record.finish("timeout", "TLS handshake or CONNECT answer timed out")
    except IdentityError as exc:
        record.finish("error", f"peer identity: {exc}")
        log.warning("refusing a tunnel: %s", exc, extra=_fields(record))
    except (ssl.SSLError, OSError, SmeshError) as exc:
        record.finish("error", str(exc))
    finally:
        if tracked.active is None:
            abort(app)
            if upstream is not None:
                upstream.close()


async def _tunnel(
    pod: PodConfig,
    svc: Services,
    app: socket.socket,
    upstream: socket.socket,
    tracked: Tracked,
    *,
    expected: SpiffeId,
    target: tuple[IPAddress, int],
) -> None:
    """Mutual TLS to the destination's agent, prove identities, CONNECT, then relay."""
    loop = asyncio.get_running_loop()
    record = tracked.record
    ctx, generation = svc.tls.client_context(pod.identity)
    key = (target[0], expected, pod.identity, generation)
    tls = TlsSession(ctx, upstream, server_side=False, session=svc.sessions.get(key))
    t0 = loop.time()
    await asyncio.wait_for(tls.handshake(flush_last=False), svc.limits.handshake_timeout)
    record.resumed = tls.obj.session_reused
    svc.observer.handshake("client", loop.time() - t0, record.resumed)
    record.peer_identity = str(verify_peer(tls.obj.getpeercert(True), expected))
    client = ClientHandshake(*target, headers=(("x-request-id", secrets.token_hex(8)),))
    await tls.send(client.request())
    answer: Established | Refused = await asyncio.wait_for(
        tls.read_until(client.receive), svc.limits.request_timeout
    )
    now = loop.time()
    if svc.sessions.wants(key, record.resumed, now):
        svc.sessions.put(key, tls.obj.session, now)
    if isinstance(answer, Refused):
        result = REFUSAL_RESULTS.get(answer.status, "error")
        record.finish(result, f"peer answered {answer.status} {answer.reason}")
        await tls.close()
        return
    relay = Relay(app, tls, record, svc.scratch, tracked.relay_done)
    tracked.active = relay
    relay.start(answer.trailing)


async def _refuse(tls: TlsSession, record: ConnectionRecord, status: int, why: str) -> None:
    """Answer with an error status, close_notify and a half-close, so the peer reads it all."""
    record.finish(REFUSAL_RESULTS.get(status, "error"), why)
    try:
        await tls.send(response(status, why))
        await tls.close()
    except (OSError, ssl.SSLError):
        return
    record.detail = f"{status}: {why}"
    tls.sock.close()


async def inbound(pod: PodConfig, svc: Services, conn: socket.socket, tracked: Tracked) -> None:
    """A tunnel request from another pod's agent: prove, authorize, connect, relay."""
    loop = asyncio.get_running_loop()
    record = tracked.record
    record.route = "tunnel"
    local: socket.socket | None = None
    tls = TlsSession(svc.tls.server_context(pod.identity), conn, server_side=True)
    try:
        t0 = loop.time()
        await asyncio.wait_for(tls.handshake(flush_last=False), svc.limits.handshake_timeout)
        svc.observer.handshake("server", loop.time() - t0, tls.obj.session_reused)
        record.resumed = tls.obj.session_reused
        peer = peer_identity(tls.obj.getpeercert(True))
        record.peer_identity = str(peer)
        try:
            request = await asyncio.wait_for(
                tls.read_until(ServerHandshake().receive), svc.limits.request_timeout
            )
        except RemoteProtocolError as exc:
            await _refuse(tls, record, exc.status, str(exc))
            log.warning("bad tunnel request: %s", exc, extra=_fields(record))
            return
        record.destination = authority(request.ip, request.port)
        refusal = _admit(pod, svc, peer, request, record)
        if refusal is not None:
            await _refuse(tls, record, 403, refusal)
            return
        try:
            local = await _connect(svc, pod, request.ip, request.port)
        except ConnectFailed as exc:
            await _refuse(tls, record, 504 if exc.result == "timeout" else 502, exc.detail)
            return
        await tls.send(response(200))
        relay = Relay(local, tls, record, svc.scratch, tracked.relay_done)
        tracked.active = relay
        relay.start(request.trailing)
    except TimeoutError:
        record.finish("timeout", "TLS handshake or tunnel request timed out")
    except ssl.SSLError as exc:
        record.finish("error", f"TLS: {exc.reason or exc}")
        log.warning(
            "TLS with %s failed: %s", record.source, exc.reason or exc, extra=_fields(record)
        )
        conn.close()  # the alert is on its way; a reset could overtake it
    except IdentityError as exc:
        record.finish("error", f"peer identity: {exc}")
        log.warning("refused a peer: %s", exc, extra=_fields(record))
    except (OSError, SmeshError) as exc:
        record.finish("error", f"{type(exc).__name__}: {exc}")
    finally:
        if tracked.active is None:
            if conn.fileno() >= 0:  # not already closed after an error answer
                abort(conn)
            if local is not None:
                local.close()


def _admit(
    pod: PodConfig,
    svc: Services,
    peer: SpiffeId,
    request: TunnelRequest,
    record: ConnectionRecord,
) -> str | None:
    """Why the tunnel request must be refused (403), or None to let it through."""
    ip, port = request.ip, request.port
    if ip not in pod.addresses:
        log.warning(
            "refused a tunnel to another address (open relay attempt)", extra=_fields(record)
        )
        return f"{ip} is not this pod's address"
    if port in pod.forbidden_ports:
        log.warning("refused a tunnel to a port reserved for smesh", extra=_fields(record))
        return f"port {port} is reserved for smesh"
    decision = svc.authorize(peer, pod, port)
    if decision.allowed:
        return None
    record.rule = decision.rule or ""
    log.warning(
        "denied %s -> %s port %d: %s",
        peer,
        pod.identity,
        port,
        decision.reason,
        extra=_fields(record),
    )
    return decision.reason


def app_endpoint(sock: socket.socket) -> str:
    try:
        return endpoint(sock.getpeername())
    except OSError:
        return "?"
