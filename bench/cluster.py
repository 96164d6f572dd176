"""The cluster's costs: zap latency through the HAProxy front vs direct (and the Redis lease's share
of it), the front's CPU, and three relays behind the front vs one relay for the same viewers.

Everything on 127.0.0.1: a real redis-server and haproxy (tests/servers.py: own ports, own temp
dirs, stopped by pid), `relay serve` processes, and this process as the provider (tests'
FakeProvider, real-time pacing of tests.media's H.264/AAC clip) and as the viewers (asyncio readers).

- ``zap``: one viewer tunes ``--zaps`` channels one after another (tune, first body byte, hang up):
  the time to the first body byte, median and p95, (a) through the front to the cluster, (b) direct
  to one cluster relay, (c) direct to a relay without a cluster; (b) - (c) is the lease's cost (a
  tuner lease, then an account lease, each one Redis round trip).
- ``load``: ``--viewers`` on ``--channels`` channels for ``--seconds``: through the front to three
  relays, then direct to one relay (no cluster). CPU % of one core of haproxy and of the relays
  (summed), bytes/s the viewers got.

    python -m bench.cluster [--zaps 30 --viewers 40 --channels 10 --seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from relay.cluster import routing
from relay.config import parse
from relay.tuner.hdhomerun import device_id
from tests.fake_provider import FakeProvider
from tests.harness import open_stream, serve_process
from tests.media import make_ts
from tests.servers import HAProxy, RedisServer, free_port

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def relay_yaml(
    folder: Path, provider: FakeProvider, channels: int, cluster: dict[str, Any] | None, dev: str
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0, "linger_s": 0},
        "storage": {"database": str(folder / "relay.db"), "events": str(folder / "events.jsonl")},
        "discovery": {"udp": False},
        "sync": {"on_start": False},
        "tuner": {"device_id": dev, "tuner_count": 64},
        "accounts": [
            {"name": "a", "url": provider.url, "username": provider.username, "password": provider.password,
             "max_connections": 64}
        ],
        "channels": [
            {"id": f"ch{i}", "name": f"CH{i}", "number": str(100 + i),
             "streams": [{"account": "a", "stream_id": i}]}
            for i in range(1, channels + 1)
        ],
    }  # fmt: skip
    if cluster:
        cfg["cluster"] = cluster
    path = folder / "config.yaml"
    path.write_text(json.dumps(cfg))
    return path


async def ttfb(port: int, path: str) -> float:
    t0 = time.perf_counter()
    c = await open_stream(port, path)
    try:
        assert c.status == 200, f"{path}: {c.status}"
        await c.wait_bytes(1, timeout=10)
        return (time.perf_counter() - t0) * 1000
    finally:
        await c.close()


async def zap(port: int, channels: int, n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        times.append(await ttfb(port, f"/auto/v{100 + 1 + i % channels}"))
        await asyncio.sleep(0.05)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
        "n": n,
    }


async def load(
    port: int, viewers: int, channels: int, seconds: float, pids: dict[str, list[int]]
) -> dict[str, Any]:
    clients = []
    for i in range(viewers):
        c = await open_stream(port, f"/auto/v{100 + 1 + i % channels}")
        assert c.status == 200
        clients.append(c)
    await asyncio.sleep(1.0)  # every session running
    before = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
    got0 = sum(len(c.body) for c in clients)
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    dt = time.perf_counter() - t0
    got = sum(len(c.body) for c in clients) - got0
    after = {k: sum(cpu_s(p) for p in v) for k, v in pids.items()}
    for c in clients:
        await c.close()
    out: dict[str, Any] = {f"{k}_cpu_pct": round((after[k] - before[k]) / dt * 100, 1) for k in pids}
    out["viewer_mbit_s"] = round(got * 8 / dt / 1e6, 1)
    out["viewers"] = viewers
    out["channels"] = channels
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    redis = RedisServer(tmp / "redis").start()
    provider = await FakeProvider(make_ts(), rate_factor=1.0).start()
    dev = device_id(parse({}, base_dir=tmp))
    cluster = {"redis_url": redis.url, "lease_ttl_s": 10}
    procs = []
    try:
        ports = {}
        for rid in ("r1", "r2", "r3"):
            p, port = await serve_process(
                relay_yaml(tmp / rid, provider, args.channels, {**cluster, "relay_id": rid}, dev),
                tmp / f"{rid}.log",
            )
            procs.append(p)
            ports[rid] = (p.pid, port)
        single, single_port = await serve_process(
            relay_yaml(tmp / "single", provider, args.channels, None, dev), tmp / "s.log"
        )
        procs.append(single)
        front_port = free_port()
        map_path = tmp / "front" / "channels.map"
        map_path.parent.mkdir()
        map_path.write_text(
            routing.haproxy_map(parse(json.loads((tmp / "r1" / "config.yaml").read_text())).channels)
        )
        backends = [routing.Backend(r, "127.0.0.1", port) for r, (_, port) in ports.items()]
        front = HAProxy(
            tmp / "front", routing.haproxy_config(backends, f"127.0.0.1:{front_port}", str(map_path))
        )
        front.start(front_port)
        try:
            assert front.proc is not None
            result: dict[str, Any] = {
                "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]},
                "media_mbit_s": round(provider.byte_rate * 8 / 1e6, 2),
                "zap": {
                    "through_front": await zap(front_port, args.channels, args.zaps),
                    "direct_cluster_relay": await zap(ports["r1"][1], args.channels, args.zaps),
                    "direct_single_relay": await zap(single_port, args.channels, args.zaps),
                },
            }
            z = result["zap"]
            z["front_adds_ms"] = round(
                z["through_front"]["median_ms"] - z["direct_cluster_relay"]["median_ms"], 2
            )
            z["leases_add_ms"] = round(
                z["direct_cluster_relay"]["median_ms"] - z["direct_single_relay"]["median_ms"], 2
            )
            result["load"] = {
                "three_relays_through_front": await load(
                    front_port, args.viewers, args.channels, args.seconds,
                    {"haproxy": [front.proc.pid], "relays": [pid for pid, _ in ports.values()]},
                ),
                "one_relay_direct": await load(
                    single_port, args.viewers, args.channels, args.seconds, {"relay": [single.pid]}
                ),
            }  # fmt: skip
            result["machine"]["loadavg_end"] = os.getloadavg()[0]
            return result
        finally:
            front.stop()
    finally:
        for p in procs:
            if p.returncode is None:
                p.terminate()
        await asyncio.gather(*(p.wait() for p in procs), return_exceptions=True)
        await provider.close()
        redis.stop()


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--zaps", type=int, default=30)
    ap.add_argument("--viewers", type=int, default=40)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    import uvloop

    print(json.dumps(uvloop.run(main(args)), indent=2))


if __name__ == "__main__":
    cli()
