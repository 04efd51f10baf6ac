"""Which tunnel peers the inbound side talks to: trust domain, and identity bound to address.

A certificate chaining to a trusted root proves an identity, but not that the identity
may speak here or from there. Two things are checked on top of the chain:

- the peer's trust domain is this pod's own or one of ``identity.federatedTrustDomains``
  (a root can sign any trust domain; a peer of another one is not ours to serve);
- the peer's TCP source address is an address of a live, meshed workload whose identity is
  the one the certificate names. A certificate lives 24 hours, a pod maybe minutes: without
  this a removed pod's (stolen) certificate would keep working, from anywhere, until it
  expires. Checked after the handshake, on every OPEN and CONNECT, and for every open
  carrier when the workloads change.

The data plane does not know the workload registry: the agent passes the address check in
as :attr:`PeerGate.binding`, and tells the gate when the registry changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from smesh.identity.spiffe import SpiffeId
from smesh.validation import IPAddress

log = logging.getLogger("smesh.dataplane")

Reason = Literal["foreign_trust_domain", "unknown_address", "identity_mismatch"]
REASONS: tuple[Reason, ...] = ("foreign_trust_domain", "unknown_address", "identity_mismatch")
# The registry may not know a new pod yet when its first connection arrives (the lab's
# directory source polls every 200 ms; an informer lags its API server): an address it
# does not know, or knows as another pod's, waits this long for its next update.
DEFAULT_SETTLE = 2.0
LOG_INTERVAL = 5.0  # each reason logs at most this often: a peer can trigger it at will


@dataclass(frozen=True)
class PeerRefusal:
    """Why a proven peer may not use this pod's tunnel port."""

    reason: Reason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Peer:
    """A tunnel client (carrier or CONNECT) as the inbound side proved and saw it."""

    identity: SpiffeId
    address: IPAddress


Binding = Callable[[SpiffeId, IPAddress], PeerRefusal | None]


class PeerGate:
    """The inbound side's peer checks, and the registry's "something changed" signal.

    *binding* answers whether an identity may speak from an address (the agent's registry;
    None checks no addresses, for tests of the data plane alone). *refused* counts a
    refusal by reason (the agent's metric).
    """

    def __init__(
        self,
        federated: frozenset[str] = frozenset(),
        binding: Binding | None = None,
        settle: float = DEFAULT_SETTLE,
        refused: Callable[[Reason], None] | None = None,
    ) -> None:
        self.federated = federated
        self.binding = binding
        self.settle = settle
        self._refused = refused
        self._changed: asyncio.Event | None = None
        self._listeners: set[Callable[[], None]] = set()
        self._last_log: dict[Reason, float] = {}
        self._unlogged: dict[Reason, int] = {}

    def check(self, own: SpiffeId, peer: Peer) -> PeerRefusal | None:
        """Why *peer* may not talk to a pod proving *own*, or None."""
        domain = peer.identity.trust_domain
        if domain != own.trust_domain and domain not in self.federated:
            return PeerRefusal(
                "foreign_trust_domain",
                f"trust domain {domain!r} is neither this pod's ({own.trust_domain!r}) nor "
                "listed in identity.federatedTrustDomains",
            )
        if self.binding is None:
            return None
        return self.binding(peer.identity, peer.address)

    async def settled(self, own: SpiffeId, peer: Peer) -> PeerRefusal | None:
        """:meth:`check`, giving the registry up to :attr:`settle` seconds to catch up.

        Only an address the registry does not know, or knows as another pod's, waits: a
        new pod (or a reused address) may be seen by the peer's agent before this one. A
        foreign trust domain never becomes acceptable by waiting.
        """
        refusal = self.check(own, peer)
        if refusal is None or refusal.reason == "foreign_trust_domain":
            return refusal
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle
        while refusal is not None and (left := deadline - loop.time()) > 0:
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                break
            refusal = self.check(own, peer)
        return refusal

    def changed(self) -> None:
        """The registry changed: wake the waiters, and let every endpoint check its carriers."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.add(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.discard(listener)

    def refused(self, refusal: PeerRefusal, peer: Peer, pod: str, where: str) -> None:
        """Count a refusal, and log it (at most one line per reason every few seconds)."""
        if self._refused is not None:
            self._refused(refusal.reason)
        now = time.monotonic()
        if now - self._last_log.get(refusal.reason, -LOG_INTERVAL) < LOG_INTERVAL:
            self._unlogged[refusal.reason] = self._unlogged.get(refusal.reason, 0) + 1
            return
        self._last_log[refusal.reason] = now
        more = self._unlogged.pop(refusal.reason, 0)
        log.warning(
            "refused tunnel peer %s from %s (%s) %s: %s%s",
            peer.identity,
            peer.address,
            refusal.reason,
            where,
            refusal.detail,
            f" ({more} more refused for this reason since the last line)" if more else "",
            extra={
                "fields": {
                    "pod": pod,
                    "peer_identity": str(peer.identity),
                    "peer_address": str(peer.address),
                    "reason": refusal.reason,
                    "suppressed": more,
                }
            },
        )
