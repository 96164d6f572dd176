"""Failure -> first decodable frame, and tune -> first decodable frame: through the relay vs direct.

A *decodable frame* is a whole video keyframe at the client: from its PES start (random access) to
the next video PES start, which is when a demuxer knows it is complete. Measured at the client on
the arrival times of its reads, with the HD media of bench/splice.py (720p H.264/AAC, 2 s GOP, its
keyframe ~60 kB sent as one run of video packets), the fake provider pacing every connection at the
media's rate with ``--prebuffer`` seconds burst on connect (0 by default: the keyframe then arrives
at the stream's pace, the case where holding it costs most).

- ``failover``: a session on a/1 (backup b/2) reads 300 kB, then the provider drops a/1; time from the
  drop to the backup's whole keyframe (the one right after the relay's PAT/PMT).
- ``zap``: a fresh session on an idle channel; time from the request to the first whole keyframe.
- ``direct``: a client that connects to the provider itself at that moment (a reconnect): time from
  the connect to its first whole keyframe. The ratio relay/direct is the figure (issue 18 asks
  <= 1.1x for a failover, <= 1.2x for a zap).

Runs the relay and the fake provider in one process on 127.0.0.1 (uvloop). Prints one JSON object.

    python -m bench.firstframe [--n 15] [--prebuffer 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
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

from bench.splice import hd_media
from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import StreamClient, config_for, open_stream, running_relay

TS = 188


def _video_pid(body: bytes | bytearray) -> int | None:
    """The first PID carrying an H.264 PES start (stream ids 0xE0-0xEF)."""
    for o in range(0, len(body) - TS + 1, TS):
        p = body[o : o + TS]
        if p[0] == 0x47 and p[1] & 0x40:
            pay = 4 + (1 + p[4] if p[3] & 0x20 else 0)
            if pay + 4 <= TS and p[pay : pay + 3] == b"\x00\x00\x01" and 0xE0 <= p[pay + 3] <= 0xEF:
                return ((p[1] & 0x1F) << 8) | p[2]
    return None


def keyframe_end(body: bytes | bytearray, start: int = 0, after_psi: bool = False) -> int | None:
    """Byte offset just past the first whole keyframe at or after ``start``: the end of the packet that
    starts the next video PES. ``after_psi``: only a keyframe right after a PAT and a PMT packet (the
    relay's entry)."""
    vpid = _video_pid(body[start:])
    if vpid is None:
        return None
    key: int | None = None
    prev: list[int] = []
    for o in range(start - start % TS, len(body) - TS + 1, TS):
        p = body[o : o + TS]
        pid = ((p[1] & 0x1F) << 8) | p[2]
        if pid == vpid and p[1] & 0x40:
            if key is not None:
                return o + TS
            rai = p[3] & 0x20 and p[4] > 0 and p[5] & 0x40
            if rai and (not after_psi or (len(prev) == 2 and prev[0] == 0)):
                key = o
        prev = [*prev[-1:], pid]
    return None


def arrival_of(c: StreamClient, offset: int) -> float | None:
    for at, n in c.arrivals:
        if n >= offset:
            return at
    return None


async def until_offset(c: StreamClient, find: Any, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        end = find(c.body)
        if end is not None:
            await c.wait_bytes(end, timeout)
            return int(end)
        await asyncio.sleep(0.002)
    raise TimeoutError("no whole keyframe")


async def direct(provider: FakeProvider, sid: int) -> float:
    t0 = time.monotonic()
    c = await open_stream(provider.port, f"/live/{provider.username}/{provider.password}/{sid}.ts")
    try:
        end = await until_offset(c, keyframe_end)
        at = arrival_of(c, end)
        assert at is not None
        return (at - t0) * 1000
    finally:
        await c.close()


async def main(n: int, prebuffer: float) -> dict[str, Any]:
    ts, _ = hd_media()
    t_start = time.perf_counter()
    fail_ms: list[float] = []
    zap_ms: list[float] = []
    direct_ms: list[float] = []
    async with FakeProvider(ts, default=fp.ok(prebuffer=prebuffer)) as provider:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            cfg = config_for(
                tmp, provider, {"ch": [("a", 1), ("b", 2)], "zap": [("c", 3)]},
                cooldown_s=0, upgrade_after_s=3600,
            )  # fmt: skip
            cfg["guide"] = {"sources": [{"file": str(tmp / "none.xml")}]}
            async with running_relay(cfg, tmp) as relay:
                for _ in range(n):  # alternate the three measures, so drift hits them alike
                    direct_ms.append(await direct(provider, 4))
                    t0 = time.monotonic()
                    z = await open_stream(relay.port, "/stream/zap")
                    end = await until_offset(z, keyframe_end)
                    at = arrival_of(z, end)
                    assert at is not None
                    zap_ms.append((at - t0) * 1000)
                    await z.close()
                    c = await open_stream(relay.port, "/stream/ch")
                    await c.wait_bytes(300_000, timeout=20)
                    mark = len(c.body)
                    t_fail = time.monotonic()
                    await provider.drop(1)
                    end = await until_offset(c, lambda b, m=mark: keyframe_end(b, m, after_psi=True))
                    at = arrival_of(c, end)
                    assert at is not None
                    fail_ms.append((at - t_fail) * 1000)
                    await c.close()
                    while relay.sessions:
                        await asyncio.sleep(0.005)
    med = {
        k: round(statistics.median(v), 1)
        for k, v in (("failover", fail_ms), ("zap", zap_ms), ("direct", direct_ms))
    }
    return {
        "bench": "firstframe",
        "n": n,
        "prebuffer_s": prebuffer,
        "median_ms": med,
        "failover_vs_direct": round(med["failover"] / med["direct"], 2),
        "zap_vs_direct": round(med["zap"] / med["direct"], 2),
        "samples_ms": {
            "failover": [round(x, 1) for x in fail_ms],
            "zap": [round(x, 1) for x in zap_ms],
            "direct": [round(x, 1) for x in direct_ms],
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=15)
    ap.add_argument("--prebuffer", type=float, default=0.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        out = uvloop.run(main(args.n, args.prebuffer))
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
