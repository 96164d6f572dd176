"""Failover switch time, measured at the client: from the failure at the provider to the first byte of
the backup, minus the detection time the failure needs (for a stall: from the last byte before it,
minus the stall timeout; 0 for the others).

Runs the relay and the fake provider in one process on 127.0.0.1 (uvloop), opens a fresh session per
sample, breaks the stream it is on, and reads the client side. Prints one JSON object.

    python -m bench.failover [--n 50]        (or python bench/failover.py)
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import uvloop

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, read_events, running_relay
from tests.media import make_ts

STALL_S = 0.5  # shortened stall timeout, subtracted from the StreamStall samples


@dataclass(frozen=True)
class Scenario:
    name: str
    how: str  # drop | reset | stall
    first_backup: str = "ok"  # ok | 503 | blackhole | refused
    detection_s: float = 0.0


SCENARIOS = [
    Scenario("StreamError", "drop"),
    Scenario("ConnectionError", "reset"),
    Scenario("StreamStall", "stall", detection_s=STALL_S),
    Scenario("HttpError (first backup answers 503)", "drop", "503"),
    Scenario("ConnectionError (first backup refuses)", "drop", "refused"),
    Scenario("ConnectionTimeout (first backup black-holed)", "drop", "blackhole"),
]


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run_scenario(sc: Scenario, ts: Path, n: int) -> dict[str, Any]:
    samples: list[float] = []
    relay_ms: list[float] = []
    # providers burst buffered media on connect; so does this one, as the relay's first bytes come from it
    async with FakeProvider(ts, default=fp.ok(prebuffer=0.5)) as provider:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            urls = {"b": f"http://127.0.0.1:{fp.closed_port()}"} if sc.first_backup == "refused" else None
            cfg = config_for(
                tmp, provider, {"ch": [("a", 1), ("b", 2), ("c", 3)]}, urls=urls,
                stall_timeout_s=STALL_S, cooldown_s=0, upgrade_after_s=3600,
            )  # fmt: skip
            cfg["guide"] = {"sources": [{"file": str(tmp / "none.xml")}]}  # no guide fetches during the bench
            async with running_relay(cfg, tmp) as relay:
                for _ in range(n):
                    provider.set(
                        2,
                        {"503": fp.status(503), "blackhole": fp.blackhole()}.get(
                            sc.first_backup, fp.ok(prebuffer=0.5)
                        ),
                    )
                    c = await open_stream(relay.port, "/stream/ch")
                    await c.wait_bytes(30_000)
                    before = len(provider.conns)
                    t_fail = time.monotonic()
                    if sc.how == "stall":
                        provider.stall(1)
                    else:
                        await getattr(provider, sc.how)(1)
                    await c.wait_bytes(len(c.body) + 188 * 20, timeout=10)
                    new = [x for x in provider.conns[before:] if x.stream_id in (2, 3) and x.status == 200]
                    backup_opened = min(x.opened_at for x in new)
                    first = c.first_arrival_after(max(t_fail, backup_opened))
                    assert first is not None
                    # a stall is detected stall_timeout after the last byte, which came before t_fail
                    start = max(at for at, _ in c.arrivals if at <= t_fail) if sc.how == "stall" else t_fail
                    samples.append((first - start - sc.detection_s) * 1000)
                    await c.close()
                    while relay.sessions:
                        await asyncio.sleep(0.005)
                await relay.events.flush()
            relay_ms = [e["switch_ms"] for e in read_events(tmp) if e["event"] == "failover"]
    return {
        "scenario": sc.name,
        "n": len(samples),
        "client_ms": {
            "p50": round(statistics.median(samples), 2),
            "p99": round(pct(samples, 99), 2),
            "max": round(max(samples), 2),
        },
        "relay_switch_ms_p50": round(statistics.median(relay_ms), 2) if relay_ms else None,
        "detection_subtracted_ms": sc.detection_s * 1000,
    }


async def main(n: int) -> dict[str, Any]:
    ts = make_ts()
    t0 = time.perf_counter()
    results = [await run_scenario(sc, ts, n) for sc in SCENARIOS]
    return {
        "bench": "failover",
        "samples_per_scenario": n,
        "stall_timeout_s": STALL_S,
        "hedge_delay_s": 0.25,
        "results": results,
        "seconds": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with contextlib.suppress(KeyboardInterrupt):
        out = uvloop.run(main(args.n))
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
