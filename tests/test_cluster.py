"""Three relays (`relay serve` processes) behind HAProxy, sharing a real redis-server, one Xtream
account with max_connections 2 that the fake provider enforces as a panel does (a new stream
evicts the oldest). A zap storm, a relay killed with SIGKILL mid-stream, and Redis down for 10 s:
the provider never sees a third connection, every viewer that got a 200 gets its stream."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.cluster import routing
from relay.config import parse
from relay.tuner.hdhomerun import device_id
from tests.fake_provider import FakeProvider
from tests.harness import StreamClient, open_stream, read_events, request, serve_process, until
from tests.servers import HAProxy, RedisServer, free_port

TTL = 3.0
NUMBERS = ["101", "102", "103", "104", "105"]
TS = 188


@dataclass
class Cluster:
    provider: FakeProvider
    redis: RedisServer
    front: HAProxy
    front_port: int
    relays: dict[str, tuple[asyncio.subprocess.Process, int]]
    folder: Path

    async def tune(self, number: str, source: str | None = None) -> StreamClient:
        return await open_stream(self.front_port, f"/auto/v{number}", source=source)

    def holders(self, what: str = "account:a") -> list[str]:
        """Live lease members in Redis ("relay|channel/stream|fence")."""
        members = self.redis.cli("ZRANGEBYSCORE", f"{{relay}}:{what}", "(" + _now_ms(self.redis), "+inf")
        return [m for m in _list(members)]

    def events(self, rid: str) -> list[dict[str, Any]]:
        return read_events(self.folder / rid)

    def assert_limit_held(self) -> None:
        assert self.provider.peak_streaming <= 2, f"the provider saw {self.provider.peak_streaming} streams"
        assert self.provider.evictions == 0, "the panel had to kill a stream for a third connection"


def _now_ms(r: RedisServer) -> str:
    sec, usec = _list(r.cli("TIME"))
    return str(int(sec) * 1000 + int(usec) // 1000)


def _list(text: str) -> list[str]:
    import ast

    return [str(x) for x in ast.literal_eval(text)]


def relay_config(
    folder: Path, provider: FakeProvider, redis_url: str, rid: str, dev: str, front: str
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "server": {"host": "127.0.0.1", "port": 0, "linger_s": 0},
        "storage": {"database": str(folder / "relay.db"), "events": str(folder / "events.jsonl")},
        "discovery": {"udp": False},
        "sync": {"on_start": False},
        "tuner": {"device_id": dev, "tuner_count": 8, "base_url": front},
        "cluster": {
            "redis_url": redis_url,
            "relay_id": rid,
            "lease_ttl_s": TTL,
            "trusted_fronts": ["127.0.0.1"],
        },
        "accounts": [
            {
                "name": "a",
                "url": provider.url,
                "username": provider.username,
                "password": provider.password,
                "max_connections": 2,
            }
        ],
        "channels": [
            {
                "id": f"ch{i + 1}",
                "name": f"CH{i + 1}",
                "number": n,
                "streams": [{"account": "a", "stream_id": i + 1}],
            }
            for i, n in enumerate(NUMBERS)
        ],
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.fixture
async def cluster(ts_file: Path, tmp_path: Path) -> AsyncIterator[Cluster]:
    redis = RedisServer(tmp_path / "redis").start()
    provider = FakeProvider(ts_file, max_connections=2)
    await provider.start()
    front_port = free_port()
    front_url = f"http://127.0.0.1:{front_port}"
    dev = device_id(parse({}, base_dir=tmp_path))
    paths = {
        rid: relay_config(tmp_path / rid, provider, redis.url, rid, dev, front_url)
        for rid in ("r1", "r2", "r3")
    }
    started = await asyncio.gather(*(serve_process(p, tmp_path / f"{rid}.log") for rid, p in paths.items()))
    relays = dict(zip(paths, started, strict=True))
    channels = parse(json.loads(paths["r1"].read_text())).channels
    (tmp_path / "front").mkdir()
    map_path = tmp_path / "front" / "channels.map"
    map_path.write_text(routing.haproxy_map(channels))
    backends = [routing.Backend(rid, "127.0.0.1", port) for rid, (_, port) in relays.items()]
    front = HAProxy(
        tmp_path / "front",
        routing.haproxy_config(backends, f"127.0.0.1:{front_port}", str(map_path), check_ms=500),
    ).start(front_port)
    try:
        yield Cluster(provider, redis, front, front_port, relays, tmp_path)
    finally:
        front.stop()
        for proc, _ in relays.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        await asyncio.gather(
            *(asyncio.wait_for(p.wait(), 10) for p, _ in relays.values()), return_exceptions=True
        )
        await provider.close()
        redis.stop()


async def test_every_relay_answers_as_one_tuner_and_both_urls_of_a_channel_meet_on_one_relay(
    cluster: Cluster,
) -> None:
    bodies = set()
    for _, port in cluster.relays.values():
        raw = await request(port, b"GET /discover.json HTTP/1.1\r\nHost: tv\r\nConnection: close\r\n\r\n")
        bodies.add(raw.partition(b"\r\n\r\n")[2])
    assert len(bodies) == 1  # same DeviceID, same BaseURL (the front), same TunerCount
    assert json.loads(bodies.pop())["BaseURL"] == f"http://127.0.0.1:{cluster.front_port}"
    for i, n in enumerate(NUMBERS):
        auto = await cluster.tune(n)
        assert auto.status == 200
        await auto.wait_bytes(TS * 20)
        same = await open_stream(cluster.front_port, f"/stream/ch{i + 1}")  # joins the same session
        assert same.status == 200
        await same.wait_bytes(TS * 20)
        ours = [h for h in cluster.holders() if f"|ch{i + 1}/" in h]
        assert len(ours) == 1, ours  # one provider connection for the channel's two URLs
        await auto.close()
        await same.close()
        await until(lambda: not cluster.holders(), 5, "the channel's lease released")
    cluster.assert_limit_held()


async def test_zap_storm_of_50_tunes_from_6_clients_never_exceeds_the_account(cluster: Cluster) -> None:
    rng = random.Random(20)
    plan = [[rng.choice(NUMBERS) for _ in range(9)] for _ in range(6)]
    plan[-1] = plan[-1][:5]  # 50 tunes in all
    assert sum(map(len, plan)) == 50
    got: list[tuple[str, int, int]] = []
    peak_leases = 0

    async def watch() -> None:
        nonlocal peak_leases
        while True:
            peak_leases = max(peak_leases, len(cluster.holders()))
            await asyncio.sleep(0.05)

    async def viewer(numbers: list[str], source: str) -> None:
        for n in numbers:
            c = await cluster.tune(n, source)  # six clients: six addresses, forwarded by the front
            if c.status == 200:
                await c.wait_bytes(TS * 100, timeout=8)  # it gets its stream, whole packets from the start
                assert c.body[0] == 0x47 and c.body[TS] == 0x47 and c.body[TS * 99] == 0x47
            else:
                assert c.status == 503
            got.append((n, c.status, len(c.body)))
            await c.close()
            await asyncio.sleep(rng.uniform(0, 0.15))

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(
            asyncio.gather(*(viewer(p, f"127.0.0.{i + 2}") for i, p in enumerate(plan))), 60
        )
    finally:
        watcher.cancel()
    ok = [g for g in got if g[1] == 200]
    assert len(got) == 50 and len(ok) >= 10, got
    assert peak_leases <= 2
    cluster.assert_limit_held()
    await until(lambda: not cluster.holders(), 5, "every lease released after the storm")
    refused = [e for rid in cluster.relays for e in cluster.events(rid) if e["event"] == "exhausted"]
    assert all(e["reason"] == "AccountFull" for e in refused)


async def test_a_relay_killed_mid_stream_loses_its_leases_at_the_ttl_and_its_channel_moves(
    cluster: Cluster,
) -> None:
    v1 = await cluster.tune("101")
    v2 = await cluster.tune("102")
    assert v1.status == v2.status == 200
    await v1.wait_bytes(TS * 50)
    await v2.wait_bytes(TS * 50)
    owner = next(h.split("|")[0] for h in cluster.holders() if "|ch1/" in h)
    proc, _ = cluster.relays[owner]
    proc.kill()  # SIGKILL: no release, no goodbye
    await proc.wait()
    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    await v1.wait_closed(5)
    await until(
        lambda: not any(h.startswith(owner + "|") for h in cluster.holders()),
        TTL + 2,
        "the dead relay's leases",
    )
    assert loop.time() - killed_at <= TTL + 2
    while True:  # Plex re-tunes; the dead lease may hold the slot until it expires
        again = await cluster.tune("101")
        if again.status == 200:
            break
        assert loop.time() - killed_at < TTL + 6, "channel 101 never came back"
        await again.close()
        await asyncio.sleep(0.3)
    await again.wait_bytes(TS * 50)
    new_owner = next(h.split("|")[0] for h in cluster.holders() if "|ch1/" in h)
    assert new_owner != owner
    if not v2.closed:
        n = len(v2.body)
        await v2.wait_bytes(n + TS * 50)  # the other channel flowed on
    cluster.assert_limit_held()
    assert len(cluster.holders()) <= 2
    await again.close()
    await v2.close()


async def test_redis_down_for_10_s_keeps_open_streams_refuses_new_tunes_and_recovers(
    cluster: Cluster,
) -> None:
    v1 = await cluster.tune("101")
    assert v1.status == 200
    await v1.wait_bytes(TS * 50)
    loop = asyncio.get_running_loop()
    cluster.redis.stop()
    down_at = loop.time()
    await asyncio.sleep(0.5)
    refused = await cluster.tune("102")
    assert refused.status == 503
    await refused.close()
    before = len(v1.body)
    await asyncio.sleep(10 - (loop.time() - down_at))
    assert len(v1.body) > before + TS * 200 and not v1.closed  # it kept flowing the whole time
    assert v1.max_gap(after=down_at) < 1.5
    cluster.redis.start()
    up_at = loop.time()
    while True:
        c = await cluster.tune("102")
        if c.status == 200:
            break
        await c.close()
        assert loop.time() - up_at < TTL * 2 + 3, "tunes never recovered"
        await asyncio.sleep(0.3)
    await c.wait_bytes(TS * 50)
    assert any("|ch1/" in h for h in cluster.holders())  # v1's relay re-added its running lease
    cluster.assert_limit_held()
    events = [e for rid in cluster.relays for e in cluster.events(rid)]
    down = [e for e in events if e["event"] == "ledger_unavailable"]
    assert down and f"redis 127.0.0.1:{cluster.redis.port}" in down[0]["detail"]
    why = [
        e
        for e in events
        if e["event"] in ("tune_refused", "exhausted") and e["reason"] == "LedgerUnavailable"
    ]
    assert why, "no event says the tune was refused because Redis was unreachable"
    assert any(e["event"] == "ledger_available" for e in events)
    assert all("relay_id" in e for e in events)
    await c.close()
    await v1.close()
