"""Two relays in this process sharing one redis-server: an account's limit and the tuner count hold
across both, refusals say why, events carry relay_id in a cluster and not without one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from relay.config import parse
from relay.shell.app import Relay
from tests.fake_provider import FakeProvider
from tests.fake_xtream import PASSWORD, FakeXtream, Stream
from tests.harness import config_for, open_stream, read_events, recorder, running_relay, until
from tests.servers import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis").start()
    try:
        yield srv
    finally:
        srv.stop()


def clustered(tmp: Path, provider: FakeProvider, url: str, name: str, **tuner: int) -> dict:
    tmp.mkdir(exist_ok=True)
    cfg = config_for(tmp, provider, {"ch1": [("a", 1)], "ch2": [("a", 2)], "ch3": [("b", 3)]})
    cfg["cluster"] = {"redis_url": url, "relay_id": name, "lease_ttl_s": 3}
    cfg["tuner"] = {"tuner_count": tuner.get("tuner_count", 4)}
    return cfg


async def test_an_account_full_on_another_relay_is_full_here(
    provider: FakeProvider, redis_server: RedisServer, tmp_path: Path
) -> None:
    c1 = clustered(tmp_path / "r1", provider, redis_server.url, "r1")
    c2 = clustered(tmp_path / "r2", provider, redis_server.url, "r2")
    async with running_relay(c1, tmp_path / "r1") as r1, running_relay(c2, tmp_path / "r2") as r2:
        ev2 = recorder(r2)
        v1 = await open_stream(r1.port, "/stream/ch1")
        assert v1.status == 200
        await v1.wait_bytes(188 * 50)
        assert redis_server.zcard("{relay}:account:a") == 1
        v2 = await open_stream(r2.port, "/stream/ch2")  # account a (max 1) is held by r1
        assert v2.status == 503
        exhausted = next(e for e in ev2 if e["event"] == "exhausted")
        assert exhausted["reason"] == "AccountFull" and exhausted["relay_id"] == "r2"
        assert exhausted["failures"] == [{"stream": "a/2", "reason": "AccountFull", "http_status": None}]
        assert provider.active(2) == 0  # never asked the provider
        v3 = await open_stream(r2.port, "/stream/ch3")  # another account is free
        assert v3.status == 200
        await v3.wait_bytes(188 * 50)
        await v1.close()
        await until(lambda: redis_server.zcard("{relay}:account:a") == 0, 3, "r1's lease released")
        v2 = await open_stream(r2.port, "/stream/ch2")
        assert v2.status == 200
        await v2.wait_bytes(188 * 50)
        health = await open_stream(r2.port, "/health")
        assert health.status == 200
        await v2.close()
        await v3.close()
        await health.close()
    for rid in ("r1", "r2"):
        events = read_events(tmp_path / rid)
        assert events and all(e["relay_id"] == rid for e in events)


async def test_tuner_count_is_held_across_the_cluster(
    provider: FakeProvider, redis_server: RedisServer, tmp_path: Path
) -> None:
    c1 = clustered(tmp_path / "r1", provider, redis_server.url, "r1", tuner_count=1)
    c2 = clustered(tmp_path / "r2", provider, redis_server.url, "r2", tuner_count=1)
    async with running_relay(c1, tmp_path / "r1") as r1, running_relay(c2, tmp_path / "r2") as r2:
        ev2 = recorder(r2)
        v1 = await open_stream(r1.port, "/stream/ch1")
        assert v1.status == 200
        v3 = await open_stream(r2.port, "/stream/ch3")
        assert v3.status == 503 and v3.header("X-HDHomeRun-Error") == "805 All Tuners In Use"
        refused = next(e for e in ev2 if e["event"] == "tune_refused")
        assert refused["reason"] == "AccountFull" and "1 of 1" in refused["detail"]
        assert provider.active(3) == 0 and not r2.sessions
        await v1.close()
        await until(lambda: redis_server.zcard("{relay}:tuner:tuners") == 0, 3, "r1's tuner released")
        v3 = await open_stream(r2.port, "/stream/ch3")
        assert v3.status == 200
        await v3.wait_bytes(188 * 20)
        await v3.close()


async def test_a_single_relays_events_have_no_relay_id(provider: FakeProvider, tmp_path: Path) -> None:
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        assert relay.ledger is not None and not relay.ledger.clustered
        v = await open_stream(relay.port, "/stream/ch1")
        await v.wait_bytes(188 * 20)
        await v.close()
        await until(lambda: not relay.sessions, 3, "session end")
    events = read_events(tmp_path)
    assert events and all("relay_id" not in e for e in events)
    assert list(events[0])[:4] == ["timestamp", "level", "category", "event"]
    assert list(events[0])[-2:] == ["message", "event_id"]


async def test_one_sync_at_a_time_only_the_lock_holder_calls_player_api(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    streams = [Stream(1, "UK: BBC One HD", "bbc1.uk"), Stream(2, "FR: ARTE", "arte.fr", "2")]
    with FakeXtream(streams=streams) as xt:
        relays = []
        for rid in ("r1", "r2", "r3"):
            folder = tmp_path / rid
            folder.mkdir()
            data = {
                "storage": {"database": str(folder / "relay.db"), "events": str(folder / "events.jsonl")},
                "server": {"host": "127.0.0.1", "port": 0},
                "discovery": {"udp": False},
                "cluster": {"redis_url": redis_server.url, "relay_id": rid},
                "accounts": [{"name": "p0", "url": xt.url, "username": xt.username, "password": xt.password}],
            }
            relays.append(Relay(parse(data, base_dir=folder)))
        for r in relays:
            await r.start()
        try:
            for r in relays:
                assert r.store is not None
                await until(lambda r=r: r.store.stream_count("p0") == 2, 15, f"{r.relay_id} synced")
            assert xt.count("login") == 1 and xt.count("get_live_streams") == 1  # one sync reached the panel
            import gzip

            import redis

            r = redis.Redis(host="127.0.0.1", port=redis_server.port)
            published = orjson.loads(gzip.decompress(r.get("{relay}:sync:p0:user_info")))
            r.close()
            assert published["answer"]["user_info"]["auth"] == 1
            assert PASSWORD not in orjson.dumps(published).decode()  # published without credentials
            assert "username" not in published["answer"]["user_info"]
        finally:
            for r in relays:
                await r.stop()


async def test_reconcile_releases_a_lease_nothing_holds(
    provider: FakeProvider, redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = clustered(tmp_path / "r1", provider, redis_server.url, "r1")
    async with running_relay(cfg, tmp_path / "r1") as relay:
        v = await open_stream(relay.port, "/stream/ch1")
        await v.wait_bytes(188 * 20)
        session = relay.by_channel["ch1"]
        assert session.leases is not None and len(session.leases.held) == 1
        session.leases.held.clear()  # a bug somewhere forgot it: nothing would ever release it
        relay.reconcile_slots()
        await until(lambda: redis_server.zcard("{relay}:account:a") == 0, 3, "the leaked lease released")
        assert redis_server.zcard("{relay}:tuner:tuners") == 1  # the session's tuner lease is in use
        await v.close()
