"""Setting one connection up, each direction: from accept to an established relay.

Every failure ends the same way: the app side is reset (so the app sees ECONNRESET, never
a clean but empty answer), the record says why, and the listener keeps serving.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from smesh.dataplane.carrier import REFUSAL_RESULTS, Carrier, Refused, Stream
from smesh.dataplane.context import IPAddress, PodConfig, Route, Services, Target
from smesh.dataplane.dial import ConnectFailed, Outcome, dial, start_dial
from smesh.dataplane.peers import Peer
from smesh.dataplane.pool import CarrierPool
from smesh.dataplane.records import ConnectionRecord
from smesh.dataplane.relay import Relay
from smesh.dataplane.sockets import abort, endpoint
from smesh.dataplane.splice import Splice
from smesh.dataplane.tlsio import TlsSession
from smesh.errors import SmeshError
from smesh.identity.errors import IdentityError
from smesh.identity.manager import CertificateNotReady
from smesh.identity.tls import peer_certificate
from smesh.tunnel import RemoteProtocolError, ServerHandshake, mux
from smesh.tunnel.connect import authority, response

log = logging.getLogger("smesh.dataplane")


class Tracked(Protocol):
    """The endpoint's entry for one connection: its record, and where the relay goes."""

    record: ConnectionRecord
    active: Relay | Splice | Stream | None
    task: asyncio.Task[None] | None

    def relay_done(self, relay: object) -> None: ...

    def report_opened(self) -> None:
        """Count the connection as open now (an inbound one is known only after TLS)."""


class Hooks(Protocol):
    """What the flows need from the pod's endpoint beyond one connection's entry."""

    pool: CarrierPool

    def carry(self, tracked: Tracked, carrier: Carrier, peer: Peer) -> bool:
        """An accepted connection turned out to be a carrier of streams, not one connection.

        *peer* is checked again whenever the workloads change. False: it is over its share
        or the pod at its cap (the record says why).
        """

    def admit(self, tracked: Tracked, proven: Peer) -> str | None:
        """An accepted connection proved its peer and asks one CONNECT: why not (503), if not.

        *proven* is checked again whenever the workloads change, while the tunnel lasts.
        """

    def track(self, record: ConnectionRecord) -> Tracked | None:
        """An entry for a stream that arrived on a carrier (None: the pod is at its cap)."""

    def no_certificate(self, direction: str, why: str) -> None:
        """A connection waited ``timeouts.certificateWait`` for the pod's certificate in
        vain and is refused: count it, log it (throttled)."""


async def certificate_ready(
    pod: PodConfig, svc: Services, record: ConnectionRecord, hooks: Hooks
) -> bool:
    """Wait for the pod's certificate if it has none yet (a pod is captured and listening
    before the signer answers); False: it did not come in time, the connection is refused.
    """
    if svc.tls.has_certificate(pod.identity):
        return True
    try:
        await svc.tls.wait_certificate(pod.identity, svc.limits.certificate_wait)
    except CertificateNotReady as exc:
        record.finish("refused", str(exc))
        hooks.no_certificate(record.direction, str(exc))
        return False
    return True


def _fields(record: ConnectionRecord) -> dict[str, dict[str, object]]:
    return {"fields": record.as_dict()}


Later = Callable[[], Awaitable[None]]
_REQUEST_PREFIX = secrets.token_hex(4)  # this agent's; a counter makes each id unique
_request_numbers = itertools.count(1)


def outbound(
    pod: PodConfig, svc: Services, app: socket.socket, tracked: Tracked, hooks: Hooks
) -> Later | None:
    """A captured connect: find where it was going, then tunnel, pass through or refuse.

    Done at once when the destination pod already has a carrier with room (the common case:
    no task, no wait); otherwise returns the part that waits (a carrier's handshake, a
    passthrough connect) for the caller to run as a task.
    """
    record = tracked.record
    try:
        dst_ip, dst_port = svc.original_destination(app)
        record.destination = authority(dst_ip, dst_port)
        route = svc.service_route(dst_ip, dst_port, pod) or svc.route(dst_ip, dst_port)
    except (OSError, SmeshError) as exc:
        record.finish("error", str(exc))
        abort(app)
        return None
    record.route, record.destination_pod = route.kind, route.workload
    record.service = route.service
    if dst_port in pod.forbidden_ports and (dst_ip.is_loopback or dst_ip in pod.addresses):
        # Capture would never send such a connect here: an app dialled the agent's port
        # itself, or an answer to SO_ORIGINAL_DST came from elsewhere (conntrack in the
        # pod). Following it would loop back into this listener.
        record.finish("error", f"{record.destination} is this agent, not a destination")
        abort(app)
        return None
    if route.kind == "deny":
        record.finish(
            "denied", route.detail or "destination is outside the mesh and passthrough is off"
        )
        abort(app)
        return None
    if route.kind == "refuse":  # a Service without an endpoint: a prompt reset, not a hang
        record.finish("refused", route.detail)
        abort(app)
        return None
    if route.targets:
        first = route.targets[0]
        if first.identity is not None and svc.tls.has_certificate(pod.identity):
            carrier = hooks.pool.ready(first.ip, first.identity)
            if carrier is not None:
                _chose(record, first)
                retry = _next_endpoint(pod, svc, tracked, hooks, route, start=1, failures=[])
                _open_stream(svc, app, tracked, carrier, (first.ip, first.port), retry=retry)
                return None
        return functools.partial(_service_later, pod, svc, app, tracked, hooks, route=route)
    if route.kind == "passthrough" and _link_local(dst_ip):
        if not pod.link_scope:
            record.finish(
                "denied",
                f"{dst_ip} is link-local and {pod.name} has no single interface to reach it "
                "on (capture keeps the address, not the app's scope id)",
            )
            abort(app)
            return None
        dst_ip = ipaddress.IPv6Address(f"{dst_ip}%{pod.link_scope}")
    carrier = None
    if route.kind == "tunnel" and svc.tls.has_certificate(pod.identity):
        assert route.identity is not None
        carrier = hooks.pool.ready(dst_ip, route.identity)
    if carrier is None:
        target = (dst_ip, dst_port)
        return functools.partial(
            _outbound_later, pod, svc, app, tracked, hooks, route=route, target=target
        )
    _open_stream(svc, app, tracked, carrier, (dst_ip, dst_port))
    return None


async def _outbound_later(
    pod: PodConfig,
    svc: Services,
    app: socket.socket,
    tracked: Tracked,
    hooks: Hooks,
    *,
    route: Route,
    target: tuple[IPAddress, int],
) -> None:
    record = tracked.record
    upstream: socket.socket | None = None
    try:
        if route.kind == "passthrough":
            upstream = await dial(svc, pod, *target)
            splice = Splice(app, upstream, record, svc.scratch, tracked.relay_done)
            tracked.active = splice
            splice.start()
            return
        assert route.identity is not None
        if not await certificate_ready(pod, svc, record, hooks):
            return
        carrier = await hooks.pool.get(target[0], route.identity)
        _open_stream(svc, app, tracked, carrier, target)
    except ConnectFailed as exc:
        record.finish(exc.result, exc.detail)
    except TimeoutError:
        record.finish("timeout", "TLS handshake with the destination's agent timed out")
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


def _chose(record: ConnectionRecord, target: Target) -> None:
    record.endpoint = authority(target.ip, target.port)
    record.destination_pod = target.workload
    record.route = "tunnel" if target.identity is not None else "passthrough"


async def _service_later(
    pod: PodConfig,
    svc: Services,
    app: socket.socket,
    tracked: Tracked,
    hooks: Hooks,
    *,
    route: Route,
    start: int = 0,
    sent: bytes = b"",
    fin: bool = False,
    failures: list[str] | None = None,
) -> None:
    """A connect to a Service: its endpoints in turn, from *start*, until one takes it.

    An endpoint whose agent (or, for a non-meshed endpoint, whose app) cannot be connected,
    or whose agent does not prove the endpoint's identity, costs the app nothing yet: none
    of its bytes has left, so the next endpoint is tried (the route holds a few). So is one
    whose agent REFUSEs the stream before the app sent more than REPLAY_LIMIT bytes: what
    it sent (*sent*, *fin*) goes to the next one first; then only meshed endpoints are tried
    (a plain connect has no way to say it refused before the bytes reached the app).
    """
    record = tracked.record
    upstream: socket.socket | None = None
    failures = list(failures or ())
    result = "refused" if failures else "error"
    try:
        for index in range(start, len(route.targets)):
            target = route.targets[index]
            if target.identity is None and (sent or fin):
                continue
            if index:
                svc.service_retried()
            _chose(record, target)
            where = f"{target.workload or target.ip} ({record.endpoint})"
            try:
                if target.identity is None:
                    upstream = await dial(svc, pod, target.ip, target.port)
                    splice = Splice(app, upstream, record, svc.scratch, tracked.relay_done)
                    tracked.active = splice
                    splice.start()
                    return
                if not await certificate_ready(pod, svc, record, hooks):
                    return
                carrier = await hooks.pool.get(target.ip, target.identity)
            except ConnectFailed as exc:
                result, why = exc.result, exc.detail
            except TimeoutError:
                result, why = "timeout", "TLS handshake with the endpoint's agent timed out"
            except IdentityError as exc:
                result, why = "error", f"peer identity: {exc}"
                log.warning("refusing a tunnel: %s", exc, extra=_fields(record))
            except (ssl.SSLError, OSError, SmeshError) as exc:
                result, why = "error", str(exc)
            else:
                retry = _next_endpoint(
                    pod, svc, tracked, hooks, route, start=index + 1, failures=failures
                )
                _open_stream(
                    svc,
                    app,
                    tracked,
                    carrier,
                    (target.ip, target.port),
                    retry=retry,
                    sent=sent,
                    fin=fin,
                )
                return
            failures.append(f"{where}: {why}")
        record.finish(result, f"{route.service}: no endpoint took it: " + "; ".join(failures))
    finally:
        if tracked.active is None:
            abort(app)
            if upstream is not None:
                upstream.close()


def _next_endpoint(
    pod: PodConfig,
    svc: Services,
    tracked: Tracked,
    hooks: Hooks,
    route: Route,
    *,
    start: int,
    failures: list[str],
) -> Refused:
    """What a stream to a Service's endpoint does with a REFUSE: the endpoints after it."""

    def refused(app: socket.socket, sent: bytes, fin: bool, answer: str) -> None:
        record = tracked.record
        tried = [*failures, f"{record.destination_pod} ({record.endpoint}): peer answered {answer}"]
        tracked.active = None
        flow = _service_later(
            pod,
            svc,
            app,
            tracked,
            hooks,
            route=route,
            start=start,
            sent=sent,
            fin=fin,
            failures=tried,
        )
        tracked.task = asyncio.get_running_loop().create_task(_retrying(flow, app, tracked))

    return refused


async def _retrying(flow: Awaitable[None], app: socket.socket, tracked: Tracked) -> None:
    """The endpoint's set-up task, for a connection already set up once (its endpoint
    refused it): the same ending whatever happens."""
    try:
        await flow
    except asyncio.CancelledError:
        tracked.record.finish("reset", "the pod left the mesh")
        abort(app)
    except Exception:  # a bug must not take the listener down
        log.exception("unexpected error retrying a connection to a Service")
        tracked.record.finish("error", "internal error")
        abort(app)
    finally:
        tracked.task = None
    if tracked.active is None:
        tracked.relay_done(None)


def _open_stream(
    svc: Services,
    app: socket.socket,
    tracked: Tracked,
    carrier: Carrier,
    target: tuple[IPAddress, int],
    *,
    retry: Refused | None = None,
    sent: bytes = b"",
    fin: bool = False,
) -> None:
    record = tracked.record
    dst_ip, dst_port = target
    record.peer_identity = carrier.peer_identity
    record.resumed = carrier.resumed
    record.request_id = request_id = f"{_REQUEST_PREFIX}{next(_request_numbers):x}"
    stream = carrier.open_stream(
        app,
        record,
        tracked.relay_done,
        lambda stream_id: mux.open_frame(stream_id, dst_ip, dst_port, request_id),
        on_refused=retry,
        sent=sent,
        fin=fin,
    )
    tracked.active = stream
    stream.expect_answer(
        svc.limits.request_timeout, lambda: svc.observer.tunnel_ready(time.time() - record.started)
    )


async def inbound(
    pod: PodConfig, svc: Services, conn: socket.socket, tracked: Tracked, hooks: Hooks
) -> None:
    """A tunnel connection from another pod's agent: prove, then carry streams.

    A peer that negotiated smesh-mux/1 (ALPN) gets a carrier; one that did not (openssl
    s_client, curl, a debugging operator) may still ask one ``CONNECT`` in HTTP/1.1.
    """
    loop = asyncio.get_running_loop()
    record = tracked.record
    record.route = "tunnel"
    local: socket.socket | None = None
    carried = False
    if not await certificate_ready(pod, svc, record, hooks):
        abort(conn)  # no certificate to answer with: reset, as when nothing listens
        return
    tls = TlsSession(svc.tls.server_context(pod.identity), conn, server_side=True)
    try:
        t0 = loop.time()
        await asyncio.wait_for(tls.handshake(flush_last=False), svc.limits.inbound_deadline)
        svc.observer.handshake("server", loop.time() - t0, tls.obj.session_reused)
        record.resumed = tls.obj.session_reused
        identity, _issued, expires = peer_certificate(tls.obj.getpeercert(True))
        record.peer_identity = str(identity)
        peer = Peer(identity, ipaddress.ip_address(conn.getpeername()[0]))
        if not await _peer_admitted(pod, svc, tls, record, peer):
            return
        version = mux.version_of(tls.obj.selected_alpn_protocol())
        if version is not None:
            streams = InboundStreams(pod, svc, hooks, peer, record.source)
            carrier = Carrier(
                tls,
                "server",
                svc.scratch,
                str(identity),
                windows=svc.windows,
                on_open=streams.opened,
                version=version,
            )
            carrier.peer_expires = expires
            carried = hooks.carry(tracked, carrier, peer)
            if carried:
                carrier.start()  # also sends the handshake's last flight
            return
        over_share = hooks.admit(tracked, peer)
        if over_share is not None:
            await _refuse(tls, record, 503, over_share, deadline=svc.limits.request_timeout)
            return
        tracked.report_opened()
        local = await _serve_connect(pod, svc, tls, tracked, peer)
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
        if tracked.active is None and not carried:
            if conn.fileno() >= 0:  # not already closed after an error answer
                abort(conn)
            if local is not None:
                local.close()


async def _peer_admitted(
    pod: PodConfig, svc: Services, tls: TlsSession, record: ConnectionRecord, peer: Peer
) -> bool:
    """Whether a proven peer may speak here (trust domain, identity bound to its address).

    A refused one has no frame or request read: close_notify is the refusal, the closest
    to an alert that Python's ssl can send once the handshake is done.
    """
    refusal = await svc.peers.settled(pod.identity, peer)
    if refusal is None:
        return True
    svc.peers.refused(refusal, peer, pod.name, "after the TLS handshake")
    record.finish("denied", f"peer refused: {refusal}")
    try:  # its handshake slot is free already: a peer that reads nothing must not hold on
        async with asyncio.timeout(svc.limits.request_timeout):
            await tls.close()
    except TimeoutError:
        abort(tls.sock)
        return False
    tls.sock.close()
    return False


class InboundStreams:
    """The OPENs of one inbound carrier: each checked like a CONNECT, then connected."""

    def __init__(
        self, pod: PodConfig, svc: Services, hooks: Hooks, peer: Peer, source: str
    ) -> None:
        self.pod = pod
        self.svc = svc
        self.hooks = hooks
        self.peer = peer
        self.source = source  # the peer agent's address, for the records

    def opened(self, carrier: Carrier, stream_id: int, payload: bytes) -> None:
        pod = self.pod
        try:
            ip, port, request_id = mux.parse_open(payload)
        except RemoteProtocolError as exc:
            log.warning("bad stream request from %s: %s", self.peer.identity, exc)
            carrier.refuse(stream_id, 400, str(exc))
            return
        record = ConnectionRecord(
            direction="inbound",
            pod=pod.name,
            source=self.source,
            identity=str(pod.identity),
            peer_identity=str(self.peer.identity),
            destination=authority(ip, port),
            route="tunnel",
            resumed=carrier.resumed,
            request_id=request_id,
        )
        tracked = self.hooks.track(record)
        if tracked is None:
            carrier.refuse(stream_id, 503, f"{pod.name} is at its connection cap or leaving")
            return
        refusal = _admit(pod, self.svc, self.peer, ip, port, record=record)
        if refusal is not None:
            record.finish("denied", refusal)
            carrier.refuse(stream_id, 403, refusal)
            tracked.relay_done(None)
            return
        stream = carrier.accept_stream(stream_id, record, tracked.relay_done)
        tracked.active = stream
        done = functools.partial(_stream_connected, carrier, stream)
        try:
            connecting = start_dial(carrier.loop, self.svc, pod, (ip, port), done)
        except ConnectFailed as failed:
            done(failed)
            return
        if connecting.pending:
            stream.cancel_on_end(connecting.cancel)


def _stream_connected(carrier: Carrier, stream: Stream, outcome: Outcome) -> None:
    """The app's socket of an inbound stream is connected (OK), or could not be (REFUSE).

    Only called for an open stream: one that ends first cancels its connect.
    """
    if isinstance(outcome, ConnectFailed):
        status = 504 if outcome.result == "timeout" else 502
        carrier.answer(stream, status, outcome.detail)
        stream.refused(outcome.result, outcome.detail)
        return
    carrier.answer(stream, 200)
    stream.attach(outcome)


async def _serve_connect(
    pod: PodConfig, svc: Services, tls: TlsSession, tracked: Tracked, peer: Peer
) -> socket.socket | None:
    """One HTTP/1.1 CONNECT on a TLS connection of its own; the app socket, if connected."""
    record = tracked.record
    try:
        request = await asyncio.wait_for(
            tls.read_until(ServerHandshake().receive), svc.limits.request_timeout
        )
    except RemoteProtocolError as exc:
        await _refuse(tls, record, exc.status, str(exc), deadline=svc.limits.request_timeout)
        log.warning("bad tunnel request: %s", exc, extra=_fields(record))
        return None
    record.destination = authority(request.ip, request.port)
    refusal = _admit(pod, svc, peer, request.ip, request.port, record=record)
    if refusal is not None:
        await _refuse(tls, record, 403, refusal, deadline=svc.limits.request_timeout)
        return None
    try:
        local = await dial(svc, pod, request.ip, request.port)
    except ConnectFailed as exc:
        status = 504 if exc.result == "timeout" else 502
        await _refuse(
            tls, record, status, exc.detail, exc.result, deadline=svc.limits.request_timeout
        )
        return None
    try:
        await tls.send(response(200))
    except BaseException:  # the peer went, or the pod is leaving: the app sees a reset
        abort(local)
        raise
    relay = Relay(local, tls, record, svc.scratch, tracked.relay_done)
    tracked.active = relay
    relay.start(request.trailing)
    return local


async def _refuse(
    tls: TlsSession,
    record: ConnectionRecord,
    status: int,
    why: str,
    result: str = "",
    *,
    deadline: float,
) -> None:
    """Answer with an error status, close_notify and a half-close, so the peer reads it all.

    *result* is the record's, when the status alone does not say (502 for any failed connect).
    A peer that does not take the answer within *deadline* seconds is reset by the caller:
    the connection holds no handshake slot any more, nothing else would end it.
    """
    record.finish(result or REFUSAL_RESULTS.get(status, "error"), why)
    try:
        async with asyncio.timeout(deadline):
            await tls.send(response(status, why))
            await tls.close()
    except (OSError, ssl.SSLError, TimeoutError):
        return
    record.detail = f"{status}: {why}"
    tls.sock.close()


def _admit(
    pod: PodConfig,
    svc: Services,
    peer: Peer,
    ip: IPAddress,
    port: int,
    *,
    record: ConnectionRecord,
) -> str | None:
    """Why the tunnel request must be refused (403), or None to let it through."""
    refusal = svc.peers.check(pod.identity, peer)
    if refusal is not None:  # e.g. the peer's pod is gone since its carrier was accepted
        svc.peers.refused(refusal, peer, pod.name, "on a tunnel request")
        return f"peer refused: {refusal}"
    if ip not in pod.addresses:
        log.warning(
            "refused a tunnel to another address (open relay attempt)", extra=_fields(record)
        )
        return f"{ip} is not this pod's address"
    if port in pod.forbidden_ports:
        log.warning("refused a tunnel to a port reserved for smesh", extra=_fields(record))
        return f"port {port} is reserved for smesh"
    decision = svc.authorize(peer.identity, pod, port)
    record.rule = decision.decided_by  # allowed or not: the flow log says by what
    if decision.allowed:
        return None
    log.warning(
        "denied %s -> %s port %d: %s",
        peer.identity,
        pod.identity,
        port,
        decision.reason,
        extra=_fields(record),
    )
    return decision.reason


def _link_local(ip: IPAddress) -> bool:
    return isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local


def app_endpoint(sock: socket.socket) -> str:
    try:
        return endpoint(sock.getpeername())
    except OSError:
        return "?"
