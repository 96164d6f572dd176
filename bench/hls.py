"""HLS against TS: zap time, switch time between kinds, and the relay's CPU per viewer.

- zap: a fresh session per sample, request -> the first keyframe packet (random_access_indicator
  on the video PID) at the client, for an HLS channel and a TS channel;
- switch: HLS -> TS (the playlist answers 500) and TS -> HLS (the TS primary drops), the failover
  event's switch_ms (detection to the backup's entry keyframe out);
- cpu: `relay serve` in its own process, one channel of each kind with 1 and then 4 viewers for
  `--seconds`: its CPU time over wall time (the fake providers run in this process, not in it).

Prints one JSON object.    python -m bench.hls [--n 5] [--seconds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import uvloop

from tests.fake_hls import FakeHls, make_hls
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, recorder, running_relay, serve_process, until
from tests.media import make_ts

TS = 188


def first_keyframe_at(body: bytes | bytearray) -> int | None:
    """Byte offset of the first packet with random_access_indicator set (a keyframe's start)."""
    for off in range(0, len(body) - TS + 1, TS):
        p = body[off : off + TS]
        if p[0] == 0x47 and p[3] & 0x20 and p[4] > 0 and p[5] & 0x40:
            return off
    return None


def config(tmp: Path, provider: FakeProvider, hls_url: str, **failover: Any) -> dict[str, Any]:
    cfg = config_for(tmp, provider, {"ts": [("a", 1)], "hls": [("b", 2)], "mix": [("a", 3)]}, **failover)
    cfg["channels"][1]["streams"] = [{"url": hls_url}, {"account": "b", "stream_id": 2, "priority": 1}]
    cfg["channels"][2]["streams"] = [
        {"account": "c", "stream_id": 3},
        {"url": hls_url, "priority": 1},
    ]
    return cfg


async def zap(port: int, channel: str) -> float:
    t0 = time.monotonic()
    c = await open_stream(port, f"/stream/{channel}")
    try:
        deadline = t0 + 15
        while time.monotonic() < deadline:
            off = first_keyframe_at(c.body)
            if off is not None:
                for at, n in c.arrivals:
                    if n > off:
                        return (at - t0) * 1000
            await asyncio.sleep(0.005)
        raise RuntimeError(f"no keyframe on {channel}")
    finally:
        await c.close()


async def switches(tmp: Path, provider: FakeProvider, hls: FakeHls, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"hls_to_ts": [], "ts_to_hls": []}
    for i in range(n):
        run = tmp / f"sw{i}"
        run.mkdir()
        cfg = config(run, provider, hls.url, stall_timeout_s=1.0, cooldown_s=0)
        async with running_relay(cfg, run) as relay:
            events = recorder(relay)
            c = await open_stream(relay.port, "/stream/hls")
            await c.wait_bytes(150_000, timeout=15)
            hls.playlist_status(500)
            await until(lambda ev=events: [e for e in ev if e["event"] == "failover"], timeout=10)
            hls.heal()
            await c.close()
            c = await open_stream(relay.port, "/stream/mix")
            await c.wait_bytes(150_000, timeout=15)
            await provider.drop(3)
            await until(lambda ev=events: len([e for e in ev if e["event"] == "failover"]) >= 2, timeout=10)
            await asyncio.sleep(0.5)
            await c.close()
            fo = [e for e in events if e["event"] == "failover"]
            out["hls_to_ts"].append(fo[0]["switch_ms"])
            out["ts_to_hls"].append(fo[1]["switch_ms"])
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu(tmp: Path, provider: FakeProvider, hls: FakeHls, seconds: float) -> dict[str, dict[str, float]]:
    run = tmp / "cpu"
    run.mkdir()
    cfg = config(run, provider, hls.url)
    cfg["server"]["linger_s"] = 0
    (run / "config.yaml").write_bytes(orjson.dumps(cfg))
    proc, port = await serve_process(run / "config.yaml", run / "relay.log")
    out: dict[str, dict[str, float]] = {}
    try:
        for channel in ("ts", "hls"):
            for viewers in (1, 4):
                clients = [await open_stream(port, f"/stream/{channel}") for _ in range(viewers)]
                await asyncio.sleep(2)  # past the start burst
                c0, t0 = cpu_s(proc.pid), time.monotonic()
                await asyncio.sleep(seconds)
                used, wall = cpu_s(proc.pid) - c0, time.monotonic() - t0
                got = [len(c.body) for c in clients]
                for c in clients:
                    await c.close()
                await asyncio.sleep(0.5)
                out[f"{channel}_{viewers}_viewers"] = {
                    "cpu_pct": round(100 * used / wall, 2),
                    "cpu_pct_per_viewer": round(100 * used / wall / viewers, 2),
                    "min_bytes_per_viewer": min(got),
                }
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)
    return out


async def main(n: int, seconds: float) -> dict[str, Any]:
    logging.disable(logging.WARNING)
    media = make_hls()
    async with FakeProvider(make_ts(12), rate_factor=1.0) as provider, FakeHls(media) as hls:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            zaps: dict[str, list[float]] = {"ts": [], "hls": []}
            for i in range(n):
                run = tmp / f"zap{i}"
                run.mkdir()
                async with running_relay(config(run, provider, hls.url), run) as relay:
                    for channel in ("ts", "hls"):
                        zaps[channel].append(await zap(relay.port, channel))
            sw = await switches(tmp, provider, hls, n)
            usage = await cpu(tmp, provider, hls, seconds)

    def summary(xs: list[float]) -> dict[str, float]:
        return {"median": round(statistics.median(xs), 1), "max": round(max(xs), 1), "n": len(xs)}

    return {
        "zap_ms": {k: summary(v) for k, v in zaps.items()},
        "switch_ms": {k: summary(v) for k, v in sw.items()},
        "cpu": usage,
        "hls": {"segment_s": media.durations[0], "window": hls.window, "live_edge_targets": 3},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    print(orjson.dumps(uvloop.run(main(args.n, args.seconds)), option=orjson.OPT_INDENT_2).decode())
