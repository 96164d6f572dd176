"""Soak: N channel streams for M minutes while the provider breaks them, every few seconds, at random.

`relay serve` runs as a subprocess (so its RSS and fd count are its own) on a YAML config; the fake
provider and N HTTP clients run here. Every channel has three streams on three accounts; every
`--fault-every` seconds one channel's current stream gets a random fault (drop, reset, stall, or a
drop after which that stream answers 503 for a while), and only while both of its other streams are
healthy, so a healthy backup always exists. Each client checks every packet as it arrives: with the
splice off (the default here) the relay passes packets through unchanged, so after the relay's
keepalive null packets are set aside the client's stream is a run of segments, each the provider's
file from its first byte on; a packet that is neither the next one nor a new segment's first is
counted as lost or corrupt. Prints one JSON object:

- sessions started/ended, failovers by reason, upgrades, exhaustions (from the relay's events);
- recovery: injected faults after which the client got a new upstream's packets in time (NFR11);
- bytes_lost (jumps inside a segment), bad_packets (not from the file), torn (bytes off the 188 grid),
  streams_ended (a response that ended): all should be 0;
- RSS and fd count of the relay at start (after warm-up), every minute, and at the end.

    python -m bench.soak --streams 20 --minutes 10       (python -m bench.soak --short: ~20 s, for CI)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import uvloop
import yaml

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for
from tests.media import make_ts

ROOT = Path(__file__).resolve().parent.parent
TS = 188
NULL_PID = b"\x1f\xff"
ACCOUNTS = ("a", "b", "c")
FAULTS = ("drop", "reset", "stall", "503")


# ---- the client side: read a chunked stream and check every packet ------------------------------------


@dataclass
class Checker:
    """Checks a relayed stream against the provider's file: runs of the file from its first packet."""

    ref: bytes
    compare: bool = True  # False with the splice on: it rewrites packets, so only framing is checked
    index: dict[bytes, list[int]] = field(default_factory=dict)
    pos: int | None = None  # offset in ref of the packet expected next
    carry: bytes = b""
    bytes_in: int = 0
    packets: int = 0
    nulls: int = 0
    segments: int = 0  # upstreams seen (1 + switches)
    lost_bytes: int = 0  # provider bytes skipped inside a segment
    bad_packets: int = 0  # packets that are not in the file at all
    torn: int = 0  # packets without a sync byte where one must be
    last_data: float = 0.0  # when the last packet of media (not a null packet) came
    resumed: list[float] = field(default_factory=list)  # media after >= 0.1 s without, or a new segment

    def __post_init__(self) -> None:
        for off in range(0, len(self.ref), TS):
            self.index.setdefault(self.ref[off : off + TS], []).append(off)

    def feed(self, data: bytes, now: float) -> None:
        self.bytes_in += len(data)
        buf = self.carry + data if self.carry else data
        whole = len(buf) - len(buf) % TS
        self.carry = buf[whole:]
        ref, size = self.ref, len(self.ref)
        for off in range(0, whole, TS):
            pkt = buf[off : off + TS]
            self.packets += 1
            if pkt[0] != 0x47:
                self.torn += 1
                continue
            if pkt[1:3] == NULL_PID:
                self.nulls += 1
                continue
            if now - self.last_data >= 0.1:
                self.resumed.append(now)
            self.last_data = now
            if not self.compare:
                continue
            pos = self.pos
            if pos is not None and ref[pos : pos + TS] == pkt:
                self.pos = (pos + TS) % size
            elif pkt == ref[:TS]:
                self.segments += 1  # a switch: the new upstream's stream from its first byte
                self.pos = TS
                if not self.resumed or self.resumed[-1] != now:
                    self.resumed.append(now)
            else:
                where = self.index.get(pkt)
                if not where:
                    self.bad_packets += 1
                    continue
                base = pos or 0
                nxt = min(where, key=lambda q: (q - base) % size)
                self.lost_bytes += (nxt - base) % size
                self.pos = (nxt + TS) % size


@dataclass
class Client:
    channel: str
    checker: Checker
    status: int = 0
    ended_at: float | None = None
    error: str | None = None
    task: asyncio.Task[None] | None = None
    writer: asyncio.StreamWriter | None = None

    async def run(self, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer = writer
        writer.write(f"GET /stream/{self.channel} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        self.status = int(head.split(b" ", 2)[1])
        clock = time.monotonic
        try:
            while True:
                line = await reader.readuntil(b"\r\n")
                size = int(line[:-2], 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                self.checker.feed(data[:-2], clock())
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as e:
            self.error = type(e).__name__
        self.ended_at = time.monotonic()


# ---- the relay as a user runs it -----------------------------------------------------------------------


class RelayProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0

    async def start(self) -> None:
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(self.config),
            stdout=self._log, stderr=self._log, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while not self.port:
            m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", self.log.read_bytes())
            if m:
                self.port = int(m.group(1))
            elif self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"relay did not start: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    def usage(self) -> dict[str, int]:
        """The relay process's resident memory (kB) and open file descriptors."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return {"rss_kb": rss, "fds": len(os.listdir(f"/proc/{self.proc.pid}/fd"))}

    async def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            rc = await self.proc.wait()
        self._log.close()
        return rc


# ---- the soak ------------------------------------------------------------------------------------------


@dataclass
class Soak:
    streams: int
    seconds: float
    fault_every: float
    stall_timeout_s: float
    splice: bool
    seed: int
    rng: random.Random = field(init=False)
    faults: Counter[str] = field(default_factory=Counter)
    recovered: Counter[str] = field(default_factory=Counter)
    missed: list[dict[str, Any]] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    bad_until: dict[int, float] = field(default_factory=dict)  # stream id -> answers 503 until
    busy_until: dict[str, float] = field(default_factory=dict)  # channel -> recovering until
    stopped_at: float = float("inf")  # when the relay was told to stop

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def sids(self, ch: int) -> list[int]:
        return [1000 * (k + 1) + ch for k in range(len(ACCOUNTS))]

    async def run(self) -> dict[str, Any]:
        ts = make_ts()
        data = ts.read_bytes()
        ref = data[: len(data) - len(data) % TS]
        t_begin = time.monotonic()
        async with FakeProvider(ts, default=fp.ok(prebuffer=0.5)) as provider:  # providers burst on connect
            with tempfile.TemporaryDirectory(prefix="relay-soak-") as d:
                tmp = Path(d)
                chans = {f"ch{i}": [(a, s) for a, s in zip(ACCOUNTS, self.sids(i), strict=True)]
                         for i in range(self.streams)}  # fmt: skip
                cfg = config_for(tmp, provider, chans, accounts=ACCOUNTS,
                                 max_connections={a: self.streams + 2 for a in ACCOUNTS},
                                 stall_timeout_s=self.stall_timeout_s, splice=self.splice)  # fmt: skip
                cfg["tuner"] = {"tuner_count": self.streams}
                (tmp / "guide.xml").write_text("<tv></tv>\n")
                cfg["guide"] = {"sources": [{"file": str(tmp / "guide.xml")}]}
                (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
                relay = RelayProcess(tmp / "config.yaml", tmp / "relay.log")
                await relay.start()
                clients = [
                    Client(f"ch{i}", Checker(ref, compare=not self.splice)) for i in range(self.streams)
                ]
                for c in clients:
                    c.task = asyncio.create_task(c.run(relay.port))
                await asyncio.sleep(min(5.0, self.seconds / 4))  # warm-up: every stream running
                start_usage = relay.usage()
                samples = [{"t_s": 0, **start_usage}]
                t0 = time.monotonic()
                end = t0 + self.seconds
                checks: list[asyncio.Task[None]] = []
                next_sample = t0 + 60
                while (now := time.monotonic()) < end:
                    checks.append(asyncio.create_task(self.fault(provider, clients)))
                    if now >= next_sample:
                        samples.append({"t_s": round(now - t0), **relay.usage()})
                        next_sample += 60
                    await asyncio.sleep(self.fault_every * self.rng.uniform(0.5, 1.5))
                await asyncio.gather(*checks)
                await asyncio.sleep(2.0)
                end_usage = relay.usage()
                samples.append({"t_s": round(time.monotonic() - t0), **end_usage})
                self.stopped_at = time.monotonic()
                rc = await relay.stop()
                await asyncio.wait([c.task for c in clients if c.task is not None], timeout=5)
                events = [orjson.loads(x) for x in (tmp / "events.jsonl").read_bytes().splitlines() if x]
                log_text = (tmp / "relay.log").read_text(errors="replace")
        return self.report(clients, events, start_usage, end_usage, samples, rc, log_text, t_begin)

    async def fault(self, provider: FakeProvider, clients: list[Client]) -> None:
        """Break one channel's current stream, then see the client get a new upstream in time."""
        now = time.monotonic()
        ready = []
        for i, c in enumerate(clients):
            live = [s for s in self.sids(i) if provider.active(s)]
            healthy = all(self.bad_until.get(s, 0) < now for s in self.sids(i))
            if len(live) == 1 and healthy and self.busy_until.get(c.channel, 0) < now and c.ended_at is None:
                ready.append((c, live[0]))
        if not ready:
            return
        c, sid = self.rng.choice(ready)
        kind = self.rng.choice(FAULTS)
        detection = self.stall_timeout_s if kind == "stall" else 0.0
        deadline = detection + 2.0 + 3.0  # detection + budget + slack for a loaded 2-core machine
        self.busy_until[c.channel] = now + deadline + 1.0
        self.faults[kind] += 1
        segments = c.checker.segments
        t_fault = time.monotonic()
        if kind == "drop":
            await provider.drop(sid)
        elif kind == "reset":
            await provider.reset(sid)
        elif kind == "stall":
            provider.stall(sid)
        else:
            provider.set(sid, fp.status(503))
            self.bad_until[sid] = now + 15.0
            asyncio.get_running_loop().call_later(15.0, provider.set, sid, fp.ok())
            await provider.drop(sid)
        while time.monotonic() - t_fault < deadline:
            if c.checker.compare:
                # a new segment after the fault; a stall is detected stall_timeout_s after the last byte,
                # which came up to a provider tick before the fault, so its time may be slightly negative
                after = [t for t in c.checker.resumed[-5:] if t > t_fault]
                if c.checker.segments > segments and after:
                    self.recovered[kind] += 1
                    self.recovery_s.append(after[0] - t_fault - detection)
                    return
            elif c.checker.last_data > t_fault + detection + 0.5 and c.ended_at is None:
                self.recovered[kind] += 1  # splice on: no segment marker, media flows on after detection
                return
            await asyncio.sleep(0.02)
        self.missed.append({"channel": c.channel, "stream_id": sid, "kind": kind, "at_s": round(t_fault, 1)})

    def report(
        self,
        clients: list[Client],
        events: list[dict[str, Any]],
        start: dict[str, int],
        end: dict[str, int],
        samples: list[dict[str, Any]],
        rc: int,
        log_text: str,
        t_begin: float,
    ) -> dict[str, Any]:
        kinds = Counter(e["event"] for e in events)
        reasons = Counter(e["reason"] for e in events if e["event"] == "failover")
        injected = sum(self.faults.values())
        recovered = sum(self.recovered.values())
        rec = sorted(self.recovery_s)
        exhausted = kinds.get("exhausted", 0)
        failures = kinds.get("failover", 0) + exhausted
        return {
            "bench": "soak",
            "streams": self.streams,
            "seconds": self.seconds,
            "fault_every_s": self.fault_every,
            "stall_timeout_s": self.stall_timeout_s,
            "splice": self.splice,
            "seed": self.seed,
            "sessions_started": kinds.get("session_start", 0),
            "sessions_ended": kinds.get("session_end", 0),
            "faults_injected": dict(self.faults),
            "faults_recovered": dict(self.recovered),
            "recovery_rate": round(recovered / injected, 4) if injected else None,
            "missed": self.missed[:20],
            "recovery_ms": {
                "p50": round(rec[len(rec) // 2] * 1000, 1) if rec else None,
                "p99": round(rec[min(len(rec) - 1, int(len(rec) * 0.99))] * 1000, 1) if rec else None,
                "max": round(rec[-1] * 1000, 1) if rec else None,
            },
            "failovers": kinds.get("failover", 0),
            "failovers_by_reason": dict(reasons),
            "relay_recovery_rate": round(kinds.get("failover", 0) / failures, 4) if failures else None,
            "upgrades": kinds.get("upgrade", 0),
            "upgrades_failed": kinds.get("upgrade_failed", 0),
            "exhausted": exhausted,
            "clients_dropped": kinds.get("client_dropped", 0),
            "bytes_relayed": sum(c.checker.bytes_in for c in clients),
            "bytes_lost": sum(c.checker.lost_bytes for c in clients),
            "bad_packets": sum(c.checker.bad_packets for c in clients),
            "torn_packets": sum(c.checker.torn for c in clients),
            "streams_ended_early": sum(1 for c in clients if c.ended_at and c.ended_at < self.stopped_at),
            "streams_not_started": sum(1 for c in clients if c.status != 200),
            "segments": sum(c.checker.segments for c in clients),
            "null_packets": sum(c.checker.nulls for c in clients),
            "relay_start": start,
            "relay_end": end,
            "relay_samples": samples,
            "relay_exit_code": rc,
            "relay_log_errors": sum(1 for line in log_text.splitlines() if "Traceback" in line),
            "wall_s": round(time.monotonic() - t_begin, 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--fault-every", type=float, default=3.0, help="mean seconds between faults")
    ap.add_argument("--stall-timeout", type=float, default=2.0, help="the relay's failover.stall_timeout_s")
    ap.add_argument("--splice", action="store_true", help="splice on (loss is then counted as torn only)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--short", action="store_true", help="4 streams, ~20 s in all: the CI run")
    args = ap.parse_args()
    if args.short:
        args.streams, args.minutes, args.fault_every, args.stall_timeout = 4, 0.2, 1.0, 1.0
    logging.basicConfig(level=logging.ERROR)
    soak = Soak(args.streams, args.minutes * 60, args.fault_every, args.stall_timeout, args.splice, args.seed)
    out = uvloop.run(soak.run())
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
