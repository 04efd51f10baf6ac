"""Leader election with a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Numbers are client-go's defaults: a leader holds the Lease for 15 s after each renewal, renews
every 2 s, and gives up leading if it could not renew for 10 s (before anyone else may take
it: 10 < 15). A candidate retries every 2 s and takes the Lease once its record has not
changed for 15 s *as measured on the candidate's own clock* (so clock skew between replicas
does not matter), or at once when the holder released it (empty holderIdentity).

Every write carries the resourceVersion that was read, so two candidates racing for an
expired Lease cannot both win: the API server refuses the second with 409 Conflict.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("leader election needs retry period < renew deadline < lease duration")


def _record(spec: LeaseSpec | None) -> tuple[object, ...]:
    if spec is None:
        return ()
    return (spec.holderIdentity, spec.renewTime, spec.acquireTime, spec.leaseTransitions)


class LeaderElector:
    """Campaigns for one Lease; while it holds it, runs the leader's work."""

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing or Timing()
        self._clock = clock
        self._observed: tuple[object, ...] = ()
        self._observed_at = 0.0
        self.leading = False
        self._failing = False

    async def _try_acquire_or_renew(self) -> bool:
        now = dt.datetime.now(dt.UTC)
        duration = round(self.timing.lease_duration)
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            fresh = Lease(
                metadata=ObjectMeta(name=self.name, namespace=self.namespace),
                spec=LeaseSpec(
                    holderIdentity=self.identity,
                    leaseDurationSeconds=duration,
                    acquireTime=now,
                    renewTime=now,
                    leaseTransitions=0,
                ),
            )
            try:
                await self.client.create(fresh)
            except ApiError as create_exc:
                if create_exc.status.code == 409:  # another candidate created it first
                    return False
                raise
            return True
        spec = lease.spec or LeaseSpec()
        record = _record(spec)
        if record != self._observed:
            self._observed, self._observed_at = record, self._clock()
        holder = spec.holderIdentity
        held_for = float(spec.leaseDurationSeconds or duration)
        if holder and holder != self.identity and self._clock() < self._observed_at + held_for:
            return False
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = duration
        spec.renewTime = now
        lease.spec = spec
        try:
            await self.client.replace(lease)  # carries the resourceVersion read above
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        self._observed, self._observed_at = _record(spec), self._clock()
        return True

    async def _attempt(self) -> bool:
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the request fails, and the campaign would never stop.
            async with asyncio.timeout(self.timing.retry_period * 2):
                won = await self._try_acquire_or_renew()
        except Exception as exc:  # API errors, transport errors, timeouts: retry, never die
            # One line per outage, not one per retry (every 2 s).
            (log.debug if self._failing else log.warning)(
                "lease %s/%s: %r; retrying every %g s",
                self.namespace,
                self.name,
                exc,
                self.timing.retry_period,
            )
            self._failing = True
            return False
        if self._failing:
            log.info("lease %s/%s: the API answers again", self.namespace, self.name)
            self._failing = False
        return won

    async def _acquire(self) -> None:
        logged = False
        while not await self._attempt():
            if not logged:
                log.info("waiting to lead (lease %s/%s held by another)", self.namespace, self.name)
                logged = True
            await asyncio.sleep(self.timing.retry_period)

    async def _hold(self) -> None:
        """Renew every retry period; return when no renewal succeeded for the renew deadline."""
        last = self._clock()
        while True:
            await asyncio.sleep(self.timing.retry_period)
            if await self._attempt():
                last = self._clock()
            elif self._clock() - last >= self.timing.renew_deadline:
                return

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Forever: wait to lead, lead (run *lead*) until the Lease is lost, start over."""
        while True:
            await self._acquire()
            self.leading = True
            log.info("leading (lease %s/%s as %s)", self.namespace, self.name, self.identity)
            work = asyncio.ensure_future(lead())
            holding = asyncio.ensure_future(self._hold())
            try:
                await asyncio.wait({work, holding}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                self.leading = False
                for task in (work, holding):
                    task.cancel()
                # asyncio.wait, not `await task` under suppress(CancelledError): that would
                # also swallow a cancellation of run() itself arriving meanwhile (a SIGTERM).
                await asyncio.wait({work, holding})
            if work.done() and not work.cancelled() and work.exception() is not None:
                raise work.exception()  # type: ignore[misc]
            log.warning("lost the lease %s/%s; stopped leading", self.namespace, self.name)

    async def release(self) -> None:
        """Give the Lease up (on shutdown) so another replica leads at its next retry."""
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            spec = lease.spec
            if spec is None or spec.holderIdentity != self.identity:
                return
            now = dt.datetime.now(dt.UTC)
            spec.holderIdentity = None
            spec.leaseDurationSeconds = 1
            spec.renewTime = now
            spec.acquireTime = now
            await self.client.replace(lease)
            log.info("released the lease %s/%s", self.namespace, self.name)
        except (ApiError, OSError) as exc:
            log.warning("could not release the lease %s/%s: %s", self.namespace, self.name, exc)
