"""Leader election on a Lease: client-go's rules, against an in-memory API with its conflicts."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import Status
from lightkube.resources.coordination_v1 import Lease

from smesh.controller.lease import LeaderElector, Timing


def _error(code: int) -> ApiError:
    return ApiError(status=Status(code=code, message=f"HTTP {code}"))


class FakeApi:
    """One Lease with resourceVersions; a write of a stale version is a 409, as on the server."""

    def __init__(self) -> None:
        self.lease: Lease | None = None
        self.version = 0
        self.down = False

    async def get(self, _res: Any, _name: str, *, namespace: str) -> Lease:
        if self.down:
            raise OSError("connection refused")
        if self.lease is None:
            raise _error(404)
        return copy.deepcopy(self.lease)

    async def create(self, obj: Lease) -> Lease:
        if self.lease is not None:
            raise _error(409)
        return self._store(obj)

    async def replace(self, obj: Lease) -> Lease:
        if self.down:
            raise OSError("connection refused")
        assert obj.metadata is not None
        assert self.lease is not None
        assert self.lease.metadata is not None
        if obj.metadata.resourceVersion != self.lease.metadata.resourceVersion:
            raise _error(409)
        return self._store(obj)

    def _store(self, obj: Lease) -> Lease:
        self.version += 1
        stored = copy.deepcopy(obj)
        assert stored.metadata is not None
        stored.metadata.resourceVersion = str(self.version)
        self.lease = stored
        return copy.deepcopy(stored)

    @property
    def holder(self) -> str | None:
        return self.lease.spec.holderIdentity if self.lease and self.lease.spec else None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(api: FakeApi, name: str, clock: Clock) -> LeaderElector:
    return LeaderElector(api, "smesh-system", "smesh-controller", name, clock=clock)  # type: ignore[arg-type]


def test_timing_defaults_are_client_gos() -> None:
    t = Timing()
    assert (t.lease_duration, t.renew_deadline, t.retry_period) == (15.0, 10.0, 2.0)
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        Timing(lease_duration=10, renew_deadline=10)


def test_first_candidate_creates_the_lease_second_waits_for_expiry() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)

    async def run() -> None:
        assert await a._try_acquire_or_renew()
        assert api.holder == "a"
        assert not await b._try_acquire_or_renew()  # b sees a's record for the first time
        clock.now += 14.9
        assert not await b._try_acquire_or_renew()  # unchanged, but not for 15 s yet
        clock.now += 0.2
        assert await b._try_acquire_or_renew()  # a stopped renewing: b takes over
        assert api.holder == "b"
        assert api.lease is not None
        assert api.lease.spec is not None
        assert api.lease.spec.leaseTransitions == 1

    asyncio.run(run())


def test_a_renewing_leader_is_never_taken_over() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)

    async def run() -> None:
        assert await a._try_acquire_or_renew()
        for _ in range(20):  # 40 s of renewals every 2 s
            clock.now += 2
            assert await a._try_acquire_or_renew()
            assert not await b._try_acquire_or_renew()
        assert api.holder == "a"

    asyncio.run(run())


def test_a_released_lease_is_taken_at_once() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)

    async def run() -> None:
        assert await a._try_acquire_or_renew()
        assert not await b._try_acquire_or_renew()
        await a.release()
        assert api.holder is None
        assert await b._try_acquire_or_renew()

    asyncio.run(run())


def test_release_leaves_someone_elses_lease_alone() -> None:
    api, clock = FakeApi(), Clock()
    a, b = elector(api, "a", clock), elector(api, "b", clock)

    async def run() -> None:
        assert await a._try_acquire_or_renew()
        await b.release()
        assert api.holder == "a"

    asyncio.run(run())


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win() -> None:
    api, clock = FakeApi(), Clock()
    a, b, c = elector(api, "a", clock), elector(api, "b", clock), elector(api, "c", clock)

    async def run() -> None:
        assert await a._try_acquire_or_renew()
        assert not await b._try_acquire_or_renew()
        assert not await c._try_acquire_or_renew()
        clock.now += 16
        wins = await asyncio.gather(b._try_acquire_or_renew(), c._try_acquire_or_renew())
        assert sorted(wins) == [False, True]

    asyncio.run(run())


def test_the_leader_stops_leading_when_it_cannot_renew_within_the_deadline() -> None:
    """The work is cancelled after the renew deadline (10 s), before anyone may take over (15 s)."""
    api = FakeApi()
    fast = Timing(lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
    a = LeaderElector(api, "smesh-system", "smesh-controller", "a", timing=fast)  # type: ignore[arg-type]
    lost = asyncio.Event()

    async def lead() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            lost.set()

    async def run() -> None:
        campaign = asyncio.create_task(a.run(lead))
        while not a.leading:
            await asyncio.sleep(0.01)
        api.down = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(lost.wait(), 5)
        assert loop.time() - started < fast.lease_duration + 0.3
        assert not a.leading
        campaign.cancel()
        with pytest.raises(asyncio.CancelledError):
            await campaign

    asyncio.run(run())
