"""Leader election on a Lease (ferry/backends/kubernetes/lease.py): decide() cases, then LeaseElector against the
fake Kubernetes API (tests/kube_fake.py) through the real `kubernetes` client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes import client as k8s

from ferry.backends.kubernetes.lease import (
    Action,
    LeaseElector,
    LeaseRecord,
    decide,
    parse_micro_time,
)
from tests.helpers import wait_until
from tests.kube_fake import FakeKubeAPI

NS = "default"
DURATION = 1.0
RENEW = 0.25
RETRY = 0.1
DEADLINE = DURATION * 2 / 3  # the elector's default renew deadline
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"


# ---- decide() -----------------------------------------------------------------------------------------


def rec(holder: str | None, renewed_at: float = 1000.0, duration_s: float = 10.0, transitions: int = 0) -> LeaseRecord:
    return LeaseRecord(holder, renewed_at, renewed_at, duration_s, transitions, "1")


def test_decide_create_when_no_lease() -> None:
    assert decide(1000.0, None, "me", 10.0) is Action.CREATE


def test_decide_renew_when_we_hold_it_even_if_expired() -> None:
    assert decide(1000.0, rec("me", renewed_at=0.0), "me", 10.0) is Action.RENEW


def test_decide_take_when_free() -> None:
    assert decide(1000.0, rec(None, renewed_at=1000.0), "me", 10.0) is Action.TAKE
    assert decide(1000.0, rec("", renewed_at=1000.0), "me", 10.0) is Action.TAKE


def test_decide_wait_while_live_take_when_expired_by_renew_time() -> None:
    assert decide(1005.0, rec("other", renewed_at=1000.0), "me", 10.0) is Action.WAIT
    assert decide(1010.0, rec("other", renewed_at=1000.0), "me", 10.0) is Action.WAIT  # not strictly past
    assert decide(1010.5, rec("other", renewed_at=1000.0), "me", 10.0) is Action.TAKE


def test_decide_uses_the_records_duration() -> None:
    record = rec("other", renewed_at=1000.0, duration_s=30.0)
    assert decide(1020.0, record, "me", 10.0) is Action.WAIT
    assert decide(1031.0, record, "me", 10.0) is Action.TAKE
    no_duration = rec("other", renewed_at=1000.0, duration_s=0.0)
    assert decide(1011.0, no_duration, "me", 10.0) is Action.TAKE  # falls back to ours


def test_decide_expiry_from_local_observation_not_remote_clock() -> None:
    # The holder's wall clock runs an hour behind ours: by renewTime its lease looks long expired, but we saw
    # the record change 2 s ago (local monotonic clock), so it is live.
    skewed_behind = rec("other", renewed_at=time.time() - 3600, duration_s=10.0)
    now_mono = 500.0
    assert decide(time.time(), skewed_behind, "me", 10.0) is Action.TAKE  # what a renewTime check would do
    assert decide(now_mono, skewed_behind, "me", 10.0, observed_at=now_mono - 2) is Action.WAIT
    # The holder's clock runs an hour ahead and it died: renewTime says live for an hour, observation says
    # the record has not changed for 11 s > 10 s.
    skewed_ahead = rec("other", renewed_at=time.time() + 3600, duration_s=10.0)
    assert decide(time.time(), skewed_ahead, "me", 10.0) is Action.WAIT
    assert decide(now_mono, skewed_ahead, "me", 10.0, observed_at=now_mono - 11) is Action.TAKE
    assert decide(now_mono, skewed_ahead, "me", 10.0, observed_at=now_mono - 9) is Action.WAIT


def test_record_round_trip_and_micro_time() -> None:
    r = LeaseRecord("a", 1700000000.25, 1700000001.5, 15.0, 3, "42")
    obj = r.to_lease("ferry", NS)
    assert obj["metadata"] == {"name": "ferry", "namespace": NS, "resourceVersion": "42"}
    assert obj["spec"]["acquireTime"] == "2023-11-14T22:13:20.250000Z"
    assert obj["spec"]["leaseDurationSeconds"] == 15
    back = LeaseRecord.from_lease(obj)
    assert back == r and back.resource_version == "42"
    assert "holderIdentity" not in LeaseRecord(None, 0, 0, 1.5, 0).to_lease("x", NS)["spec"]
    assert LeaseRecord(None, 0, 0, 1.5, 0).to_lease("x", NS)["spec"]["leaseDurationSeconds"] == 2  # rounded up
    assert parse_micro_time("2023-11-14T22:13:20.250000123Z") == pytest.approx(1700000000.25)
    assert parse_micro_time("2023-11-14T23:13:20+01:00") == 1700000000.0
    assert parse_micro_time(None) == 0.0 and parse_micro_time("garbage") == 0.0


def test_elector_rejects_bad_timing() -> None:
    api = k8s.ApiClient(k8s.Configuration())
    try:
        with pytest.raises(ValueError):
            LeaseElector(api, NS, duration_s=1.0, renew_every_s=1.0)
        with pytest.raises(ValueError):
            LeaseElector(api, NS, duration_s=1.0, renew_every_s=0.25, renew_deadline_s=1.0)
        with pytest.raises(ValueError):
            LeaseElector(api, NS, duration_s=1.0, renew_every_s=0.25, retry_every_s=0)
    finally:
        api.close()


# ---- against the fake API ------------------------------------------------------------------------------


class Replica:
    """One elector with its own API client, its run() task and a log of (monotonic time, event)."""

    def __init__(self, fake: FakeKubeAPI, identity: str, **kwargs: Any) -> None:
        cfg = k8s.Configuration()
        cfg.host = fake.url
        cfg.retries = 0
        self.api = k8s.ApiClient(cfg)
        self.events: list[tuple[float, str]] = []
        self.elector = LeaseElector(
            self.api, NS, identity=identity, duration_s=DURATION, renew_every_s=RENEW, retry_every_s=RETRY,
            on_started_leading=self._started, on_stopped_leading=self._stopped, **kwargs,
        )
        self.task: asyncio.Task[None] | None = None

    async def _started(self) -> None:  # async callback
        self.events.append((time.monotonic(), "started"))

    def _stopped(self) -> None:  # plain callback
        self.events.append((time.monotonic(), "stopped"))

    def start(self) -> Replica:
        self.task = asyncio.create_task(self.elector.run())
        return self

    async def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.wait([self.task])

    def times(self, event: str) -> list[float]:
        return [t for t, e in self.events if e == event]

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader


@pytest.fixture
async def replicas(fake):
    made: list[Replica] = []

    def make(identity: str, **kwargs: Any) -> Replica:
        r = Replica(fake, identity, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.cancel()
        if r.task is not None and r.task.done() and not r.task.cancelled():
            assert r.task.exception() is None  # run() never dies of an API error
        r.api.close()


def lease(fake: FakeKubeAPI) -> dict[str, Any]:
    obj = fake.get("leases", "ferry")
    assert obj is not None
    return obj


def lease_writes(fake: FakeKubeAPI, since: int = 0) -> list[Any]:
    return [r for r in fake.requests[since:] if r.method in ("POST", "PUT") and r.path.startswith(LEASE_PATH)]


async def test_one_elector_leads_and_keeps_renewing(fake, replicas) -> None:
    a = replicas("a").start()
    async with asyncio.timeout(3):
        await a.elector.wait_leading()
    assert a.is_leader and len(a.times("started")) == 1
    spec = lease(fake)["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 1 and spec["leaseTransitions"] == 0
    first_rv = int(lease(fake)["metadata"]["resourceVersion"])
    first_renew = parse_micro_time(spec["renewTime"])
    await wait_until(lambda: int(lease(fake)["metadata"]["resourceVersion"]) >= first_rv + 4, timeout=3)
    spec = lease(fake)["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 0
    assert parse_micro_time(spec["renewTime"]) > first_renew
    assert a.is_leader and a.times("stopped") == []
    # the leader renews on its own last write: one PUT per renewal, no GET before each
    mark = len(fake.requests)
    await wait_until(lambda: len(lease_writes(fake, mark)) >= 2, timeout=3)
    gets = [r for r in fake.requests[mark:] if r.method == "GET" and r.path.startswith(LEASE_PATH)]
    assert gets == []


async def test_second_elector_waits_as_follower(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    b = replicas("b").start()
    deadline = time.monotonic() + 2 * DURATION
    while time.monotonic() < deadline:
        assert a.is_leader and not b.is_leader
        await asyncio.sleep(0.02)
    assert b.elector.leader == "a" and b.events == []
    assert lease(fake)["spec"]["holderIdentity"] == "a"


async def test_takeover_after_leader_dies_without_release(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    b = replicas("b").start()
    await wait_until(lambda: b.elector.leader == "a")
    await a.cancel()  # no release: the lease stays held by "a" until it expires
    t0 = time.monotonic()
    assert not a.is_leader and len(a.times("stopped")) == 1
    assert lease(fake)["spec"]["holderIdentity"] == "a"
    # not before the lease can have expired: never leader during the first half of the duration
    while time.monotonic() < t0 + DURATION / 2:
        assert not b.is_leader
        await asyncio.sleep(0.01)
    await asyncio.wait_for(b.elector.wait_leading(), 3)
    took = b.times("started")[0] - t0
    # a's last renewal was at most RENEW before t0, so expiry (as b observed it) is >= t0 + DURATION - RENEW
    assert DURATION - RENEW - 0.05 <= took <= DURATION + RETRY * 1.2 + 0.5, took
    spec = lease(fake)["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


async def test_release_hands_over_within_a_retry_interval(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    b = replicas("b").start()
    await wait_until(lambda: b.elector.leader == "a")
    t0 = time.monotonic()
    await a.elector.release()
    assert a.task is not None and a.task.done()
    assert not a.is_leader and len(a.times("stopped")) == 1
    await asyncio.wait_for(b.elector.wait_leading(), 3)
    took = b.times("started")[0] - t0
    assert took < RETRY * 1.2 + 0.2 < DURATION / 2, took
    spec = lease(fake)["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1


async def test_release_on_cancel(fake, replicas) -> None:
    a = replicas("a", release_on_cancel=True).start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    await a.cancel()
    assert "holderIdentity" not in lease(fake)["spec"]
    b = replicas("b").start()
    await asyncio.wait_for(b.elector.wait_leading(), 0.5)


async def test_transitions_counted_across_hand_overs(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    b = replicas("b").start()
    await wait_until(lambda: b.elector.leader == "a")
    await a.elector.release()
    await asyncio.wait_for(b.elector.wait_leading(), 3)
    a2 = replicas("a").start()  # "a" again, a new process with the same identity
    await wait_until(lambda: a2.elector.leader == "b")
    await b.elector.release()
    await asyncio.wait_for(a2.elector.wait_leading(), 3)
    spec = lease(fake)["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseTransitions"] == 2
    # renewals by the same holder do not count
    rv = int(lease(fake)["metadata"]["resourceVersion"])
    await wait_until(lambda: int(lease(fake)["metadata"]["resourceVersion"]) >= rv + 2)
    assert lease(fake)["spec"]["leaseTransitions"] == 2


async def test_racing_for_an_absent_lease_elects_exactly_one(fake, replicas) -> None:
    racers = [replicas(name) for name in ("a", "b", "c")]
    for r in racers:
        r.start()
    await wait_until(lambda: any(r.is_leader for r in racers), timeout=3)
    deadline = time.monotonic() + 2 * DURATION
    while time.monotonic() < deadline:
        assert sum(r.is_leader for r in racers) == 1
        await asyncio.sleep(0.01)
    leader = next(r for r in racers if r.is_leader)
    assert lease(fake)["spec"]["holderIdentity"] == leader.elector.identity
    assert lease(fake)["spec"]["leaseTransitions"] == 0
    assert all(len(r.times("started")) == (1 if r is leader else 0) for r in racers)
    assert all(r.task is not None and not r.task.done() for r in racers)  # the losers' 409s did not escape


async def test_create_conflict_is_handled(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    # b's first read is told the lease is absent: it creates, gets 409 AlreadyExists, re-reads, follows
    fake.fail("GET", r"/leases/ferry$", 404, times=1)
    mark = len(fake.requests)
    b = replicas("b").start()
    await wait_until(lambda: b.elector.leader == "a")
    assert any(r.method == "POST" and r.path == LEASE_PATH for r in fake.requests[mark:])
    await asyncio.sleep(RETRY * 3)
    assert not b.is_leader and a.is_leader and not b.task.done()


async def test_update_conflict_means_lost_lease(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    # someone else writes the lease behind a's back: a's renewal (on its own last resourceVersion) gets 409,
    # a re-reads, sees a live lease held by "z" and steps down at once
    obj = lease(fake)
    obj["spec"]["holderIdentity"] = "z"
    fake._store("leases", (NS, "ferry"), obj, "MODIFIED")
    t0 = time.monotonic()
    await wait_until(lambda: not a.is_leader, timeout=2)
    assert time.monotonic() - t0 < RENEW + 0.2
    assert len(a.times("stopped")) == 1 and a.elector.leader == "z" and not a.task.done()


async def test_outage_leader_steps_down_before_its_lease_expires(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    await wait_until(lambda: len(lease_writes(fake)) >= 3)  # a few renewals
    await fake.outage()
    t_out = time.monotonic()
    last_ok = [r.at for r in lease_writes(fake) if r.at < t_out][-1]
    await wait_until(lambda: a.times("stopped"), timeout=3)
    stopped = a.times("stopped")[0]
    assert not a.is_leader
    # lease valid (for anyone) until >= last_ok + DURATION; the leader gives up at its renew deadline
    assert stopped < last_ok + DURATION - 0.1, (stopped - last_ok)
    assert stopped >= last_ok + DEADLINE - 0.1, (stopped - last_ok)
    # API back: the lease is still a's, so a renews it and leads again (same holder: no transition)
    await fake.recover()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    assert len(a.times("started")) == 2
    assert lease(fake)["spec"]["leaseTransitions"] == 0 and not a.task.done()


async def test_partitioned_leader_steps_down_before_follower_takes_over(fake, replicas) -> None:
    a = replicas("a").start()
    await asyncio.wait_for(a.elector.wait_leading(), 3)
    b = replicas("b").start()
    await wait_until(lambda: b.elector.leader == "a")
    # only a loses the API (connection refused); b still reads the lease and takes it once it expires
    a.api.configuration.host = "http://127.0.0.1:1"
    await asyncio.wait_for(b.elector.wait_leading(), 3)
    assert a.times("stopped") and not a.is_leader
    assert a.times("stopped")[0] < b.times("started")[0]
    assert lease(fake)["spec"]["holderIdentity"] == "b" and lease(fake)["spec"]["leaseTransitions"] == 1
    # a's API comes back: it sees b's live lease and stays a follower
    a.api.configuration.host = fake.url
    await wait_until(lambda: a.elector.leader == "b")
    await asyncio.sleep(DURATION)
    assert b.is_leader and not a.is_leader and len(a.times("started")) == 1
