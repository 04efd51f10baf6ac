"""The outbound side's carriers: one per (destination pod, identity it must prove, certs).

Many app connections to the same pod share a carrier; the first one pays the TCP connect
and the TLS handshake (resumed when a ticket is cached), the others only an OPEN frame.
Concurrent first connections wait for the same handshake instead of racing their own.

A carrier takes no new streams once it holds :data:`MAX_STREAMS` of them, once it is
older than :data:`MAX_AGE` (so a renewed certificate or policy-relevant identity change
reaches every pair of pods soon), or once the certificate generation changed. Carriers
without streams are closed (close_notify) after :data:`IDLE_CLOSE`.

One destination pod gets at most ``limits.max_streams_per_peer`` of this pod's streams, so
an app holding thousands of connections to one pod leaves this pod's cap to its other
flows (and the destination's to other pods).

One destination pod also gets at most ``limits.max_carriers_per_peer`` of this pod's
carriers: the destination's agent counts every open carrier of this pod against that
share and turns away the rest after their handshake. Retired carriers (aged, or of an
old certificate generation) stay open while long-lived streams use them, so without the
cap a pod would rotate its way past the share (one carrier every ten minutes) and then
fail every new connection to that pod. At the cap, a new stream goes on the youngest
carrier with room, retired or not, instead of dialling one the destination would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from smesh.dataplane.budget import Throttle
from smesh.dataplane.carrier import Carrier
from smesh.dataplane.context import IPAddress, PodConfig, Services
from smesh.dataplane.dial import ConnectFailed, dial
from smesh.dataplane.sockets import abort
from smesh.dataplane.tlsio import TlsSession
from smesh.identity.spiffe import SpiffeId
from smesh.identity.tls import verify_peer
from smesh.tunnel import mux
from smesh.tunnel.errors import TunnelError

log = logging.getLogger("smesh.dataplane")

MAX_STREAMS = mux.MAX_STREAMS
MAX_AGE = 600.0
IDLE_CLOSE = 60.0
SHARE_LOG_INTERVAL = 5.0

Key = tuple[IPAddress, SpiffeId, int]


def _check_alpn(tls: TlsSession, ip: IPAddress) -> int:
    """The smesh-mux version the destination's agent chose (ALPN)."""
    version = mux.version_of(tls.obj.selected_alpn_protocol())
    if version is None:
        raise TunnelError(f"the agent of {ip} does not speak {mux.ALPN_V1} (ALPN); upgrade it")
    return version


class CarrierPool:
    def __init__(self, pod: PodConfig, services: Services) -> None:
        self.pod = pod
        self.services = services
        self._loop = asyncio.get_running_loop()
        self._carriers: dict[Key, list[Carrier]] = {}
        self._to: dict[IPAddress, list[Carrier]] = {}  # the same carriers, by destination
        self._share_log = Throttle(SHARE_LOG_INTERVAL)
        self.over_share = 0
        self._connecting: dict[Key, asyncio.Task[Carrier]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def carriers(self) -> list[Carrier]:
        return [c for group in self._carriers.values() for c in group]

    def ready(self, ip: IPAddress, expected: SpiffeId) -> Carrier | None:
        """A connected carrier with room for one more stream, if there is one now."""
        if self._closed:
            return None
        if self._streams_to(ip) >= self.services.limits.max_streams_per_peer:
            return None  # get() says why
        _ctx, generation = self.services.tls.client_context(self.pod.identity)
        return self._ready((ip, expected, generation))

    def _streams_to(self, ip: IPAddress) -> int:
        return sum(len(carrier.streams) for carrier in self._to.get(ip, ()))

    def _check_share(self, ip: IPAddress) -> None:
        """Refuse a stream to a destination pod that has this pod's whole share already."""
        share = self.services.limits.max_streams_per_peer
        if self._streams_to(ip) < share:
            return
        self.over_share += 1
        self.services.observer.turned_away("outbound", "peer_streams")
        why = f"{self.pod.name} holds its share of {share} connections to {ip}"
        if self._share_log.ready():
            log.warning(
                "%s: resetting new connections to it (%d so far; limits.maxStreamsPerPeer)",
                why,
                self.over_share,
            )
        raise ConnectFailed("refused", why)

    def _ready(self, key: Key) -> Carrier | None:
        now = self._loop.time()
        for carrier in self._carriers.get(key, ()):
            if (
                carrier.gone_away
            ):  # GOAWAY: its agent handed over; the next stream goes on a new carrier
                continue
            if len(carrier.streams) < MAX_STREAMS and now - carrier.created < MAX_AGE:
                return carrier
        return None

    def _at_carrier_share(self, ip: IPAddress) -> bool:
        """Whether one more carrier to *ip* would pass the destination's share of them."""
        connecting = sum(1 for key in self._connecting if key[0] == ip)
        share = self.services.limits.max_carriers_per_peer
        # Carriers that got GOAWAY belong to an agent that handed over: the destination's
        # new agent does not count them.
        live = sum(1 for c in self._to.get(ip, ()) if not c.gone_away)
        return live + connecting >= share

    def _retired(self, ip: IPAddress, expected: SpiffeId) -> Carrier:
        """The youngest carrier to *ip* with room, aged or of an old generation: at the
        carrier share, it serves better than a new one its destination would refuse."""
        room = [
            c
            for c in self._to.get(ip, ())
            if c.key[1] == expected
            and not c.closed
            and not c.gone_away
            and len(c.streams) < MAX_STREAMS
        ]
        if room:
            return max(room, key=lambda c: c.created)
        share = self.services.limits.max_carriers_per_peer
        why = f"{self.pod.name} holds its share of {share} carriers to {ip}, all of them full"
        self.over_share += 1
        self.services.observer.turned_away("outbound", "peer_carriers")
        if self._share_log.ready():
            log.warning(
                "%s: resetting new connections to it (%d so far; limits.maxCarriersPerPeer)",
                why,
                self.over_share,
            )
        raise ConnectFailed("refused", why)

    async def get(self, ip: IPAddress, expected: SpiffeId) -> Carrier:
        """A carrier with room for one more stream, connecting one if none has."""
        ctx, generation = self.services.tls.client_context(self.pod.identity)
        key = (ip, expected, generation)
        while True:
            if self._closed:
                raise TunnelError("the pod is leaving the mesh")
            self._check_share(ip)
            ready = self._ready(key)
            if ready is not None:
                return ready
            task = self._connecting.get(key)
            if task is None and self._at_carrier_share(ip):
                return self._retired(ip, expected)
            if task is None:
                task = self._loop.create_task(self._connect(key, ctx))
                self._connecting[key] = task
                task.add_done_callback(functools.partial(self._connected, key))
            carrier = await asyncio.shield(task)
            self._check_share(ip)  # the streams of others that waited for it count too
            if len(carrier.streams) < MAX_STREAMS and not carrier.closed and not carrier.gone_away:
                return carrier

    def _connected(self, key: Key, task: asyncio.Task[Carrier]) -> None:
        self._connecting.pop(key, None)
        if not task.cancelled():
            task.exception()  # waiters got it; nobody else must be told it was never read

    async def _connect(self, key: Key, ctx: Any) -> Carrier:
        ip, expected, _generation = key
        svc, pod = self.services, self.pod
        sock = await dial(svc, pod, ip, pod.tunnel_port)
        session_key = (ip, expected, pod.identity, key[2])
        tls = TlsSession(ctx, sock, server_side=False, session=svc.sessions.get(session_key))
        try:
            t0 = self._loop.time()
            await asyncio.wait_for(tls.handshake(), svc.limits.handshake_timeout)
            resumed = tls.obj.session_reused
            svc.observer.handshake("client", self._loop.time() - t0, resumed)
            peer = verify_peer(tls.obj.getpeercert(True), expected)
            version = _check_alpn(tls, ip)
        except BaseException:
            abort(sock)
            raise
        carrier = Carrier(
            tls,
            "client",
            svc.scratch,
            str(peer),
            windows=svc.windows,
            on_closed=self._gone,
            version=version,
        )
        carrier.key = key
        if svc.sessions.wants(session_key, resumed, self._loop.time()):

            def keep_session() -> None:
                svc.sessions.put(session_key, tls.obj.session, self._loop.time())

            carrier.on_first_answer = keep_session
        if self._closed:
            carrier.abort("the pod is leaving the mesh")
            raise TunnelError("the pod is leaving the mesh")
        self._carriers.setdefault(key, []).append(carrier)
        self._to.setdefault(ip, []).append(carrier)
        svc.observer.carriers("client", 1)
        carrier.start()
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(IDLE_CLOSE / 4, self._sweep)
        return carrier

    def _gone(self, carrier: Carrier) -> None:
        group = self._carriers.get(carrier.key, [])
        if carrier in group:
            group.remove(carrier)
            self.services.observer.carriers("client", -1)
            if not group:
                del self._carriers[carrier.key]
            ip = carrier.key[0]
            self._to[ip].remove(carrier)
            if not self._to[ip]:
                del self._to[ip]

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self._loop.time() - IDLE_CLOSE
        for carrier in self.carriers():
            if not carrier.streams and carrier.last_active < deadline:
                carrier.close()
        if self._carriers and not self._closed:
            self._sweeper = self._loop.call_later(IDLE_CLOSE / 4, self._sweep)

    def retire(self, reason: str) -> None:
        """This agent handed the pod over: no new streams start here, so each carrier is
        closed (close_notify) once its last stream ended, an idle one at once."""
        for carrier in self.carriers():
            carrier.went_away(reason)

    def close(self) -> None:
        """Reset every carrier (and so every stream on them): the pod leaves the mesh."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for task in self._connecting.values():
            task.cancel()
        for carrier in self.carriers():
            with contextlib.suppress(Exception):
                carrier.abort("the pod left the mesh")
