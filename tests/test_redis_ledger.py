"""The Redis ledger against a real redis-server on its own port: atomic limits under interleaving,
expiry of a dead relay's leases, renewal, a Redis restart (recovery window, re-added leases, a lease
lost to fencing), and Redis unreachable (refusals that say why, recovery)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.cluster.ledger import ACCOUNT, Lease, Refusal
from relay.cluster.redis_ledger import RedisLedger, where
from relay.config import ClusterConfig
from relay.core.failover import Slots
from tests.servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()


class Relay:
    """One relay's ledger and the events it emitted."""

    def __init__(self, url: str, name: str, ttl: float = 1.5) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        cfg = ClusterConfig(redis_url=url, lease_ttl_s=max(1.0, ttl), redis_timeout_s=0.25)
        self.ledger = RedisLedger(
            Slots({"a": 2}), cfg, name, lambda ev: self.events.append((ev.kind, ev.fields()))
        )
        self.lost: list[Lease] = []

    async def acquire(self, key: str = "a", limit: int = 2, what: str = "ch/a/1") -> Lease | Refusal:
        return await self.ledger.acquire(ACCOUNT, key, limit, what, self.lost.append)

    def names(self) -> list[str]:
        return [e for e, _ in self.events]


@pytest.fixture
async def relays(redis_server: RedisServer) -> AsyncIterator[list[Relay]]:
    rs = [Relay(redis_server.url, f"r{i}") for i in range(3)]
    for r in rs:
        await r.ledger.start()
    yield rs
    for r in rs:
        await r.ledger.close()


async def test_interleaved_acquires_from_three_relays_never_exceed_the_limit(
    relays: list[Relay], redis_server: RedisServer
) -> None:
    results = await asyncio.gather(*(r.acquire(what=f"ch{i}/a/{i}") for i in range(10) for r in relays))
    granted = [g for g in results if isinstance(g, Lease)]
    refused = [g for g in results if isinstance(g, Refusal)]
    assert len(granted) == 2 and len(refused) == 28
    assert {r.reason for r in refused} == {"AccountFull"}
    assert "2 of 2 held across the cluster" in refused[0].detail
    assert redis_server.zcard("{relay}:account:a") == 2
    assert len({g.fence for g in granted}) == 2  # every grant has its own fencing number
    # a release frees the slot for any relay
    owner = next(r for r in relays if r.ledger.held())
    owner.ledger.release(next(g for g in granted if g.member.startswith(owner.ledger.relay_id)))
    await asyncio.sleep(0.05)
    other = next(r for r in relays if r is not owner)
    assert isinstance(await other.acquire(), Lease)


async def test_a_dead_relays_leases_expire_at_the_ttl_and_a_live_relays_are_renewed(
    relays: list[Relay], redis_server: RedisServer
) -> None:
    dead, live, other = relays
    assert isinstance(await dead.acquire(), Lease)
    assert isinstance(await live.acquire(), Lease)
    assert dead.ledger._renewer is not None
    dead.ledger._renewer.cancel()  # it stops renewing, as a killed process does; nothing is released
    assert isinstance(await other.acquire(), Refusal)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not isinstance(await other.acquire(), Lease):
        assert loop.time() - t0 < dead.ledger.cfg.lease_ttl_s + 1.0, "the dead relay's lease never expired"
        await asyncio.sleep(0.1)
    await asyncio.sleep(dead.ledger.cfg.lease_ttl_s + 0.5)  # past the TTL: the live one was renewed
    assert live.ledger.held() == {"account:a": 1} and not live.lost
    assert redis_server.zcard("{relay}:account:a") == 2


async def test_redis_restart_opens_a_recovery_window_and_renewals_re_add_the_running_leases(
    relays: list[Relay], redis_server: RedisServer
) -> None:
    a, b, c = relays
    assert isinstance(await a.acquire(), Lease)
    redis_server.stop()
    refused = await b.acquire()
    assert isinstance(refused, Refusal) and refused.reason == "LedgerUnavailable"
    assert "unreachable" in refused.detail and "ledger_unavailable" in b.names()
    redis_server.start()  # empty: it forgot a's lease while a's connection still runs
    got = await b.acquire()  # b knew the epoch: the restart is noticed, new leases wait one TTL
    assert isinstance(got, Refusal) and "restarted" in got.detail
    assert "ledger_available" in b.names()
    await a.ledger.renew()  # a re-adds its running lease inside the window
    assert redis_server.zcard("{relay}:account:a") == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not isinstance(await c.acquire(), Lease):
        assert loop.time() - t0 < a.ledger.cfg.lease_ttl_s + 1.0
        await asyncio.sleep(0.1)
    assert isinstance(await b.acquire(), Refusal)  # a's re-added lease counts: 2 of 2
    assert not a.lost


async def test_a_lease_gone_while_its_slots_were_taken_is_lost_and_its_holder_told(
    relays: list[Relay], redis_server: RedisServer
) -> None:
    a, b, _ = relays
    lease = await a.acquire(limit=1)
    assert isinstance(lease, Lease)
    redis_server.cli("ZREM", "{relay}:account:a", lease.member)  # gone, as if a's renewals stalled > TTL
    assert isinstance(await b.acquire(limit=1), Lease)  # b was granted the slot meanwhile
    await a.ledger.renew()
    assert a.lost == [lease] and a.ledger.held() == {}
    assert a.names() == ["lease_lost"] and a.events[0][1]["reason"] == "AccountFull"
    assert redis_server.zcard("{relay}:account:a") == 1  # never 2 on a limit of 1


async def test_unreachable_redis_refuses_with_a_clear_reason_and_recovers(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path / "r")  # not started yet
    r = Relay(srv.url, "r0")
    await r.ledger.start()
    try:
        got = await r.acquire()
        assert isinstance(got, Refusal) and got.reason == "LedgerUnavailable"
        assert r.names() == ["ledger_unavailable"]  # one event per outage, not one per refusal
        assert isinstance(await r.acquire(), Refusal) and r.names() == ["ledger_unavailable"]
        assert f"127.0.0.1:{srv.port}" in r.events[0][1]["detail"]
        srv.start()
        assert isinstance(await r.acquire(), Lease)
        assert r.names() == ["ledger_unavailable", "ledger_available"]
    finally:
        await r.ledger.close()
        srv.stop()


def test_where_never_shows_a_password() -> None:
    assert where("redis://:hunter2@10.0.0.5:6380/1") == "10.0.0.5:6380"
    assert where("rediss://user:pw@redis.lan/0") == "redis.lan:6379"
    assert where("unix:///run/redis.sock") == "unix:/run/redis.sock"
