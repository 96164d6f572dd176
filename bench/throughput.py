"""Throughput, CPU, memory, stalls and join time: the relay against nginx and the origin, in one run.

Everything runs on 127.0.0.1 in one process tree, each part in its own process:

- the **origin**: a small uvloop TS server (this file, ``_origin`` role) speaking the Xtream URL shape
  ``/live/U/P/{id}.ts``. It loops a real MPEG-TS file and paces every connection at 8 Mbit/s (1 MB/s,
  a write per 20 ms tick, connections spread over 4 tick phases, the first tick's worth sent with the
  head as providers burst on connect). A channel is live: a new connection starts where the channel is
  now, mid-GOP. ``--media hd`` (default) is bench/splice.py's 720p H.264/AAC 5 Mbit/s CBR stream with
  a 2 s GOP (PES density of a real 8 Mbit/s channel); ``--media sd`` is ``tests.media.make_ts(12)``
  (~0.55 Mbit/s, 1 s GOP: at 8 Mbit/s it carries ~15x more PES per byte, a worst case for the
  splice). User ``fast`` is not paced (the single-stream test). Each paced write carries a 13-byte
  timestamp (CLOCK_MONOTONIC) in the payload of one non-PUSI video packet, so clients measure
  origin-write -> client-read latency.
- the **proxies**, each fresh per scenario: the relay (``python -m relay serve --config <yaml>``,
  ``discovery.udp: false``, ``server.linger_s: 0``), once with ``failover.splice: true`` (default) and
  once with ``false``; and Debian's nginx as a plain reverse proxy (``proxy_buffering off``,
  ``proxy_http_version 1.1``, chunked passthrough, ``daemon off``, ``worker_processes 1``, its own config,
  pid file and temp dirs in a temp folder; installed with apt-get when missing and running as root).
  "origin" rows are clients reading the origin directly: the floor of what the machine does.
- the **load generators** (``_load`` role): 2 processes for the many-client load, 1 for a single stream,
  1 for joins; every client socket has ``SO_RCVBUF`` capped at 256 KiB (200 paused readers would
  otherwise push the kernel into TCP memory pressure). They count bytes and time every read.

Figures (one JSON object on stdout):

- ``single_stream``: unpaced origin, one client, 10 s or 2 GB: MB/s, proxy CPU-seconds per GB.
- ``load``: N clients on N/4 channels at 8 Mbit/s for T s (default 200, 50, 30 s; ``--quick`` 40, 10,
  8 s), measured after a ramp and a warm-up of max(1 s, 1.5 GOP) (a late joiner's wait for a keyframe
  is not a stall): fraction of clients that kept >= 97 % of the rate, worst stall (largest gap between
  two reads of one client that began inside the window), proxy CPU % and RSS (peak VmHWM), chunk
  latency (origin write -> client read, p50/p99, and p99 minus the direct origin's p99 as "added"),
  for ~20 clients joining running channels the median time to the first body byte and to the first
  video keyframe packet, and the origin's connection counts (the relay shares one upstream per
  channel; nginx opens one per client).
- ``curve``: CPU and RSS against clients (10, 50, 100, 200, 400; shorter runs, the 200 row is ``load``).
- ``profile``: py-spy (when installed) on the relay during a separate 200-client load: top frames.
- ``targets``: the issue's ratios, relay against nginx in this run, with pass/fail.

Also per load: the relay's events (a failover would explain a stall), the origin's own scheduling
hiccups (``origin_max_tick_gap_ms``), the whole machine's and the load generators' CPU, and when the
stalls over 50 ms happened (clients of one channel at one time = that channel; all at once = a process).

    python -m bench.throughput [--quick] [--media hd|sd] [--clients 200 --channels 50 --seconds 30]
                               [--curve 10,50,100,200,400] [--targets origin,nginx,splice,nohold,nosplice]
                               [--no-profile]                (or python bench/throughput.py)
                               [--points 400,800 [--reps 3]] [--relay-set server.write_interval_ms=0,40]

``--points`` runs only those curve points (no single stream, main load or profile), each ``--reps``
times (default 3, targets alternating), and reports the median of each figure with the runs beside it;
``--relay-set KEY=V1,V2`` runs every relay target once per value of that config key. Load processes
write their JSON to a file (a pipe cut 400 clients' results at ~64 KiB).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TS = 188
RATE = 1_000_000  # bytes/s per stream: 8 Mbit/s
TICK_S = 0.02  # the origin writes each paced connection once per tick
PHASES = 4  # ... spread over this many phases of the tick, as independent streams would be
RCVBUF = 256 * 1024  # every load-generator socket
KEPT = 0.97  # a client "kept its rate" at >= 97 % of RATE over the window
MAGIC = b"\x00RLYT"  # + little-endian double: CLOCK_MONOTONIC at the origin's write
STAMP = len(MAGIC) + 8
VIDEO_PID = 0x100  # tests.media's h264 variant
CLK_TCK = os.sysconf("SC_CLK_TCK")
PYSPY_HZ = 250


# =========================================================================================================
# origin role: a paced (or unpaced) looped-TS server


def _stamp_offsets(data: bytes) -> list[int]:
    """Packets whose payload bytes 4.. are opaque ES data: video PID, no PUSI, payload only."""
    out = []
    for off in range(0, len(data) - TS + 1, TS):
        pid = ((data[off + 1] & 0x1F) << 8) | data[off + 2]
        if pid == VIDEO_PID and not data[off + 1] & 0x40 and data[off + 3] & 0x30 == 0x10:
            out.append(off)
    return out


class Origin:
    def __init__(self, data: bytes, rate: float) -> None:
        self.size = len(data)
        self.view = memoryview(data + data)  # any slice up to `size` long is contiguous
        self.rate = rate
        self.stamps = _stamp_offsets(data)
        self.phases: list[list[OriginConn]] = [[] for _ in range(PHASES)]
        self.accepted = 0
        self.open = 0
        self.peak_open = 0
        self.tick_no = 0
        self.epoch = time.monotonic()
        self.last_tick = 0.0
        self.max_tick_gap = 0.0  # the origin's own scheduling hiccups (nominal TICK_S / PHASES)

    def stats(self, reset: str) -> bytes:
        out = {
            "accepted": self.accepted,
            "open": self.open,
            "peak_open": self.peak_open,
            "max_tick_gap_ms": round(self.max_tick_gap * 1000, 1),
        }
        if reset == "?reset":
            self.accepted, self.peak_open = 0, self.open
        if reset:
            self.max_tick_gap = 0.0
        return json.dumps(out).encode()

    def tick(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(TICK_S / PHASES, self.tick)
        now = time.monotonic()
        if self.last_tick:
            self.max_tick_gap = max(self.max_tick_gap, now - self.last_tick)
        self.last_tick = now
        phase = self.phases[self.tick_no % PHASES]
        self.tick_no += 1
        for c in phase:
            c.paced_write(now)


class OriginConn(asyncio.Protocol):
    def __init__(self, origin: Origin) -> None:
        self.o = origin
        self.transport: asyncio.Transport | None = None
        self.req = bytearray()
        self.mode = ""
        self.pos = 0
        self.sent = 0
        self.t0 = 0.0
        self.paused = False
        self.phase: list[OriginConn] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.o.accepted += 1
        self.o.open += 1
        self.o.peak_open = max(self.o.peak_open, self.o.open)

    def connection_lost(self, exc: Exception | None) -> None:
        self.o.open -= 1
        if self.phase is not None:
            self.phase.remove(self)
            self.phase = None
        self.transport = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.mode == "fast":
            self.pump()

    def data_received(self, data: bytes) -> None:
        if self.mode:
            return
        self.req += data
        if b"\r\n\r\n" not in self.req:
            if len(self.req) > 16384:
                self.transport.close()  # type: ignore[union-attr]
            return
        line = self.req.split(b"\r\n", 1)[0].decode("latin-1")
        t = self.transport
        assert t is not None
        if m := re.match(r"GET /stats(\?\w+)? ", line):
            body = self.o.stats(m.group(1) or "")
            t.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self.mode = "stats"
            t.close()
            return
        m = re.match(r"GET /live/([^/]+)/[^/]+/(\d+)\.ts ", line)
        if m is None:
            t.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.mode = "404"
            t.close()
            return
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nConnection: close\r\n\r\n")
        # a live channel: every viewer of it is at the same place, which moves on at the rate; channels
        # are at different places of the loop, so they are not in lockstep
        live = int(m.group(2)) * 4099 * TS + int((time.monotonic() - self.o.epoch) * self.o.rate)
        self.pos = live // TS * TS % self.o.size
        if m.group(1) == "fast":
            self.mode = "fast"
            t.set_write_buffer_limits(high=1 << 20, low=256 << 10)
            # the head alone first: relay/upstream.py counts a whole first read (head + body) against
            # its 64 KiB head limit, so head + 256 KiB of body in one read fails as HttpError
            asyncio.get_running_loop().call_later(0.05, self.pump)
            return
        self.mode = "paced"
        t.set_write_buffer_limits(high=256 << 10, low=64 << 10)
        now = time.monotonic()
        self.t0 = now - TICK_S  # the first tick's worth goes out with the head (a provider's burst)
        self.paced_write(now)
        self.phase = self.o.phases[self.o.accepted % PHASES]
        self.phase.append(self)

    def pump(self) -> None:
        o, t = self.o, self.transport
        chunk = 256 << 10
        while t is not None and self.transport is t and not self.paused and not t.is_closing():
            t.write(o.view[self.pos : self.pos + chunk])
            self.pos = (self.pos + chunk) % o.size

    def paced_write(self, now: float) -> None:
        t, o = self.transport, self.o
        if t is None or self.paused or t.is_closing():
            return
        due = int(o.rate * (now - self.t0)) - self.sent
        if due > o.rate:  # more than 1 s behind (paused reader, starved CPU): forget the debt beyond 1 s
            self.t0 += (due - o.rate) / o.rate
            due = int(o.rate)
        n = min(due, int(o.rate * 0.1)) // TS * TS
        if n <= 0:
            return
        a = self.pos
        i = bisect.bisect_left(o.stamps, a)
        p = o.stamps[i] if i < len(o.stamps) else o.stamps[0] + o.size if o.stamps else None
        if p is not None and p + TS <= a + n:
            t.writelines((o.view[a : p + 4], MAGIC + struct.pack("<d", now), o.view[p + 4 + STAMP : a + n]))
        else:
            t.write(o.view[a : a + n])
        self.sent += n
        self.pos = (a + n) % o.size


async def origin_main(port: int, ts: Path, rate: float, max_s: float) -> None:
    loop = asyncio.get_running_loop()
    origin = Origin(ts.read_bytes(), rate)
    server = await loop.create_server(
        lambda: OriginConn(origin), HOST, port, backlog=2048, reuse_address=True
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    origin.tick()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max_s)  # bounded: it stops by itself


# =========================================================================================================
# load role: clients that count bytes and time every read


@dataclass
class LoadState:
    host: str
    port: int
    w0: float
    w1: float
    buf: bytearray
    view: memoryview = field(init=False)
    lat: Counter[int] = field(default_factory=Counter)  # 0.1 ms bins

    def __post_init__(self) -> None:
        self.view = memoryview(self.buf)


class Client(asyncio.BufferedProtocol):
    def __init__(
        self, st: LoadState, path: str, *, stop_bytes: float = 0, stop_s: float = 0, keep: bool = False
    ) -> None:
        self.st = st
        self.path = path
        self.transport: asyncio.Transport | None = None
        self.head: bytearray | None = bytearray()
        self.status = 0
        self.body = 0
        self.t_start = 0.0
        self.head_at: float | None = None
        self.first_at: float | None = None
        self.last: float | None = None
        self.win_bytes = 0
        self.max_gap = 0.0  # reads inside the window
        self.max_gap_at = 0.0  # when it ended, seconds into the window
        self.max_gap_all = 0.0  # any two reads after the first byte
        self.ended_at: float | None = None
        self.err: str | None = None
        self.tail = b""
        self.stop_bytes = stop_bytes
        self.stop_s = stop_s
        self.chunked = False
        self.kept: bytearray | None = bytearray() if keep else None  # joins: the body as received...
        self.arrivals: list[tuple[int, float]] = []  # ... and (bytes so far, time) per read
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        req = f"GET {self.path} HTTP/1.1\r\nHost: {self.st.host}:{self.st.port}\r\nUser-Agent: bench\r\n\r\n"
        transport.write(req.encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.ended_at is None:
            self.ended_at = time.monotonic()
            if exc is not None:
                self.err = type(exc).__name__
            elif not self.done.done():
                self.err = "closed"
        for f in (self.done, self.first):
            if not f.done():
                f.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.st.view

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic()
        st = self.st
        if self.head is not None:
            self.head += st.view[:nbytes]
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            self.head_at = now
            with contextlib.suppress(ValueError):
                self.status = int(self.head[9:12])
            self.chunked = b"transfer-encoding: chunked" in self.head[:i].lower()
            rest = len(self.head) - i - 4
            if rest > 0:
                if self.kept is not None:
                    self.kept += self.head[i + 4 :]
                    self.arrivals.append((len(self.kept), now))
                self._count(now, rest)
            self.head = None
            return
        if self.kept is not None:
            self.kept += st.view[:nbytes]
            self.arrivals.append((len(self.kept), now))
        self._count(now, nbytes)
        if not st.w0 <= now < st.w1:
            self.tail = b""
            return
        buf = st.buf
        if self.tail:  # a stamp cut by the previous read
            comb = self.tail + bytes(buf[: STAMP - 1])
            j = comb.find(MAGIC)
            if 0 <= j < len(self.tail) and j + STAMP <= len(comb):
                st.lat[int((now - struct.unpack_from("<d", comb, j + len(MAGIC))[0]) * 1e4)] += 1
        i = buf.find(MAGIC, 0, nbytes)
        while i >= 0:
            if i + STAMP <= nbytes:
                st.lat[int((now - struct.unpack_from("<d", buf, i + len(MAGIC))[0]) * 1e4)] += 1
            i = buf.find(MAGIC, i + 1, nbytes)
        self.tail = bytes(buf[max(0, nbytes - STAMP + 1) : nbytes])

    def _count(self, now: float, n: int) -> None:
        st = self.st
        if self.first_at is None:
            self.first_at = now
            self.first.set_result(None)
        elif self.last is not None:
            gap = now - self.last
            if gap > self.max_gap_all:
                self.max_gap_all = gap
            if st.w0 <= self.last and now < st.w1 and gap > self.max_gap:  # a gap that began in the window
                self.max_gap = gap
                self.max_gap_at = now - st.w0
        self.last = now
        self.body += n
        if st.w0 <= now < st.w1:
            self.win_bytes += n
        if (self.stop_bytes and self.body >= self.stop_bytes) or (
            self.stop_s and now - self.first_at >= self.stop_s
        ):
            self.ended_at = now
            self.close()

    def close(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.abort()

    def keyframe_at(self) -> float | None:
        """When the first packet a decoder can start from (a video keyframe) arrived; joins only."""
        if not self.kept:
            return None
        data, segs = _dechunk(self.kept) if self.chunked else (self.kept, [(0, 0)])
        from relay.ts import is_random_access

        hi, lo = 0x40 | (VIDEO_PID >> 8), VIDEO_PID & 0xFF
        start = next((i for i in range(min(TS, len(data))) if data[i : i + 5 * TS : TS] == b"\x47" * 5), None)
        if start is None:
            return None
        for off in range(start, len(data) - TS + 1, TS):
            if data[off + 1] & 0x5F == hi and data[off + 2] == lo and is_random_access(data, off, 0x1B):
                k = bisect.bisect_right(segs, (off, 1 << 62)) - 1
                raw = segs[k][1] + off - segs[k][0] + TS  # the packet's last byte, in received bytes
                j = bisect.bisect_left(self.arrivals, (raw, 0.0))
                return self.arrivals[j][1] if j < len(self.arrivals) else None
        return None

    def result(self) -> dict[str, Any]:
        ms = lambda a, b: None if a is None or b is None else round((a - b) * 1000, 2)  # noqa: E731
        return {
            "status": self.status,
            "head_ms": ms(self.head_at, self.t_start),
            "first_ms": ms(self.first_at, self.t_start),
            "bytes": self.body,
            "win_bytes": self.win_bytes,
            "max_gap_ms": round(self.max_gap * 1000, 2),
            "max_gap_at": round(self.max_gap_at, 1),
            "max_gap_all_ms": round(self.max_gap_all * 1000, 2),
            "seconds": ms(self.ended_at or self.last, self.first_at),
            "err": self.err,
            "keyframe_ms": ms(self.keyframe_at(), self.t_start) if self.kept is not None else None,
        }


def _dechunk(raw: bytearray) -> tuple[bytearray, list[tuple[int, int]]]:
    """A chunked body's payload, and (payload offset, received offset) at the start of each chunk."""
    out, segs, i = bytearray(), [], 0
    while (j := raw.find(b"\r\n", i)) >= 0:
        try:
            size = int(raw[i:j].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        segs.append((len(out), j + 2))
        out += raw[j + 2 : j + 2 + size]
        i = j + 2 + size + 2
        if i > len(raw):
            break
    return out, segs or [(0, 0)]


async def _open(loop: asyncio.AbstractEventLoop, c: Client, at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)  # before connect: sets the window scale
    sock.setblocking(False)
    c.t_start = time.monotonic()
    try:
        await loop.sock_connect(sock, (c.st.host, c.st.port))
        await loop.create_connection(lambda: c, sock=sock)
    except OSError as e:
        sock.close()
        c.err = type(e).__name__
        c.ended_at = time.monotonic()
        for f in (c.done, c.first):
            if not f.done():
                f.set_result(None)


async def load_main(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    mode = spec["mode"]
    st = LoadState(
        spec["host"], spec["port"], spec.get("w0", 0.0), spec.get("w1", 0.0), bytearray(spec["buf"])
    )
    deadline = spec["deadline"]
    if mode == "many":  # clients connect on a ramp and read until the window ends
        clients = [Client(st, p) for p in spec["paths"]]
        tasks = [loop.create_task(_open(loop, c, at)) for c, at in zip(clients, spec["at"], strict=True)]
        await asyncio.sleep(max(0.0, st.w1 + 0.05 - time.monotonic()))
        for c in clients:
            c.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"clients": [c.result() for c in clients], "lat": dict(st.lat)}
    if mode == "single":  # one client reads as fast as it can, until stop_bytes or stop_s
        c = Client(st, spec["paths"][0], stop_bytes=spec["stop_bytes"], stop_s=spec["stop_s"])
        await _open(loop, c, spec["at"][0])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(c.done), max(0.1, deadline - time.monotonic()))
        c.close()
        return {"clients": [c.result()]}
    # joins: each at its time, reading for join_read_s after its first body byte (to see a keyframe)
    read_s = spec["join_read_s"]

    async def join(path: str, at: float) -> dict[str, Any]:
        c = Client(st, path, keep=True, stop_s=read_s)
        await _open(loop, c, at)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(c.done), max(0.1, deadline + read_s - time.monotonic()))
        c.close()
        return c.result()

    pairs = zip(spec["paths"], spec["at"], strict=True)
    return {"clients": list(await asyncio.gather(*(join(p, at) for p, at in pairs)))}


# =========================================================================================================
# orchestration: processes, /proc, scenarios


def _die_with_parent() -> None:  # preexec_fn: SIGTERM the child if this bench dies
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _role_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.throughput", *args]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(v[:8])
    return total - v[3] - v[4], total


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop_proc(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class OriginProc:
    def __init__(self, ts: Path, max_s: float) -> None:
        self.proc = subprocess.Popen(
            _role_cmd("_origin", "--ts", str(ts), "--rate", str(RATE), "--max-s", str(max_s)),
            cwd=REPO,
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.url = f"http://{HOST}:{self.port}"

    def stats(self, reset: str = "") -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats{reset}", timeout=5) as r:
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        stop_proc(self.proc)


@dataclass
class Target:
    name: str  # "origin", "nginx", "relay (splice on)", "relay (splice, no frame hold)", "relay (splice off)"
    kind: str  # origin | nginx | relay
    splice: bool = True
    frame_hold: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # relay config, "section.key" -> value


class Running:
    """A proxy (or the origin itself) ready for clients: where to connect and which pids to watch."""

    def __init__(
        self, target: Target, port: int, pids: Callable[[], list[int]], main_pid: int | None
    ) -> None:
        self.target = target
        self.port = port
        self.pids = pids
        self.main_pid = main_pid
        self.events: Path | None = None  # the relay's events.jsonl

    def event_counts(self) -> dict[str, int] | None:
        """The relay's events so far, by event and reason (failovers would explain stalls)."""
        if self.events is None or not self.events.exists():
            return None
        out: Counter[str] = Counter()
        for line in self.events.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                out[e.get("event", "?") + (f" ({e['reason']})" if e.get("reason") else "")] += 1
        return dict(out)

    def path(self, channel: int) -> str:
        if self.target.kind == "relay":
            return f"/stream/ch{channel}"
        return f"/live/bench/x/{channel}.ts"

    def fast_path(self) -> str:
        return "/stream/fast" if self.target.kind == "relay" else "/live/fast/x/0.ts"


def relay_yaml(
    tmp: Path,
    origin_url: str,
    channels: int,
    splice: bool,
    frame_hold: bool = True,
    overrides: dict[str, Any] | None = None,
) -> str:
    acc = {"url": origin_url, "password": "x", "max_connections": 10_000}
    cfg = {
        "server": {"host": HOST, "port": 0, "linger_s": 0, "max_clients": 4096},
        "storage": {"database": str(tmp / "relay.db"), "events": str(tmp / "events.jsonl")},
        "failover": {"splice": splice, "frame_hold": frame_hold, "upgrade_after_s": 3600},
        "tuner": {"tuner_count": channels + 2},
        "discovery": {"udp": False},
        "guide": {"sources": [{"file": str(tmp / "none.xml")}]},  # no guide fetches during the bench
        "accounts": [
            {"name": "bench", "username": "bench", **acc},
            {"name": "fast", "username": "fast", **acc},
        ],
        "channels": [
            {"id": "fast", "name": "FAST", "number": "1", "streams": [{"account": "fast", "stream_id": 0}]},
            *(
                {
                    "id": f"ch{i}",
                    "name": f"CH{i}",
                    "number": str(100 + i),
                    "streams": [{"account": "bench", "stream_id": i}],
                }
                for i in range(channels)
            ),
        ],
    }
    for key, value in (overrides or {}).items():
        section, name = key.split(".", 1)
        cfg.setdefault(section, {})[name] = value  # type: ignore[index]
    return json.dumps(cfg, indent=1)  # JSON is YAML


@contextlib.contextmanager
def start_relay(target: Target, tmp: Path, origin: OriginProc, channels: int) -> Iterator[Running]:
    d = Path(tempfile.mkdtemp(prefix="relay-", dir=tmp))
    (d / "config.yaml").write_text(
        relay_yaml(d, origin.url, channels, target.splice, target.frame_hold, target.overrides)
    )
    log = d / "relay.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "serve", "--config", str(d / "config.yaml")],
            cwd=REPO,
            stdout=logf,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None:
            m = re.search(rb"listening on http://[^:]+:(\d+)", log.read_bytes())
            if m:
                port = int(m.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("relay did not start: " + log.read_text(errors="replace")[-2000:])
            else:
                time.sleep(0.05)
        run = Running(target, port, lambda: [proc.pid], proc.pid)
        run.events = d / "events.jsonl"
        yield run
    finally:
        stop_proc(proc)


def ensure_nginx() -> str | None:
    """The nginx binary; Debian's package is installed with apt-get when missing and we are root."""
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx"]
    if subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=False)
        subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


NGINX_CONF = """daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {host}:{port} backlog=2048;
        location / {{
            proxy_pass {origin};
            proxy_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 30s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def start_nginx(target: Target, tmp: Path, origin: OriginProc, nginx: str) -> Iterator[Running]:
    d = Path(tempfile.mkdtemp(prefix="nginx-", dir=tmp))
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, host=HOST, port=port, origin=origin.url))
    proc = subprocess.Popen(
        [nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
        cwd=d,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        wait_port(port, 10, proc)
        yield Running(target, port, lambda: [proc.pid, *children(proc.pid)], proc.pid)
    finally:
        stop_proc(proc)


@contextlib.contextmanager
def start_target(
    target: Target, tmp: Path, origin: OriginProc, nginx: str | None, channels: int
) -> Iterator[Running]:
    if target.kind == "relay":
        with start_relay(target, tmp, origin, channels) as r:
            yield r
    elif target.kind == "nginx":
        assert nginx is not None
        with start_nginx(target, tmp, origin, nginx) as r:
            yield r
    else:
        yield Running(target, origin.port, list, None)


class Sampler(threading.Thread):
    """Samples VmRSS of the watched pids every 0.2 s; the peak of their sum."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_kb = 0
        self.stop_evt = threading.Event()

    def run(self) -> None:
        while not self.stop_evt.wait(0.2):
            self.peak_kb = max(self.peak_kb, sum(status_kb(p, "VmRSS") for p in self.pids()))

    def stop(self) -> int:
        self.stop_evt.set()
        self.join(2)
        return self.peak_kb


def spawn_load(spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    """A load process; it writes its JSON to a file (a pipe cut 400 clients' results at ~64 KiB)."""
    fd, out = tempfile.mkstemp(prefix="bench-load-", suffix=".json")
    os.close(fd)
    proc = subprocess.Popen(
        _role_cmd("_load", json.dumps({**spec, "out": out})),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    proc.out_path = out  # type: ignore[attr-defined]
    return proc


def collect(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(5)
    out_path = Path(proc.out_path)  # type: ignore[attr-defined]
    try:
        out = out_path.read_bytes() if out_path.exists() else b""
    finally:
        out_path.unlink(missing_ok=True)
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"load process failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return dict(json.loads(out))


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def hist_pct(h: Counter[int], p: float) -> float | None:
    total = sum(h.values())
    if not total:
        return None
    want = p / 100 * total
    acc = 0
    for k in sorted(h):
        acc += h[k]
        if acc >= want:
            return round(k / 10, 2)  # bins of 0.1 ms
    return None


def watched(run: Running) -> list[int]:
    return run.pids()


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_s(p) for p in pids)


def run_single(run: Running, origin: OriginProc, seconds: float, max_bytes: float) -> dict[str, Any]:
    origin.stats("?reset")
    start = time.monotonic() + 0.6
    spec = {
        "mode": "single",
        "host": HOST,
        "port": run.port,
        "paths": [run.fast_path()],
        "at": [start],
        "stop_bytes": max_bytes,
        "stop_s": seconds,
        "deadline": start + seconds + 10,
        "buf": 1 << 20,
    }
    pids = watched(run)
    c0, o0 = cpu_of(pids), cpu_s(origin.proc.pid)
    proc = spawn_load(spec)
    res = collect(proc, seconds + 30)["clients"][0]
    pids = watched(run)
    c1, o1 = cpu_of(pids), cpu_s(origin.proc.pid)
    secs = (res["seconds"] or 0) / 1000
    gb = res["bytes"] / 1e9
    return {
        "MB_s": round(res["bytes"] / 1e6 / secs, 1) if secs else None,
        "bytes": res["bytes"],
        "seconds": round(secs, 2),
        "proxy_cpu_s": round(c1 - c0, 2) if run.target.kind != "origin" else None,
        "cpu_s_per_GB": round((c1 - c0) / gb, 3) if run.target.kind != "origin" and gb else None,
        "origin_cpu_s_per_GB": round((o1 - o0) / gb, 3) if gb else None,
        "err": res["err"] if res["err"] not in (None, "closed") else None,
    }


def run_many(
    run: Running,
    origin: OriginProc,
    n: int,
    channels: int,
    seconds: float,
    *,
    procs: int,
    joins: int,
    join_read_s: float = 0.5,
    warmup_s: float = 1.0,
    pyspy: tuple[str, Path] | None = None,
) -> dict[str, Any]:
    """N clients on `channels` channels (client i watches channel i % channels) for `seconds`."""
    origin.stats("?reset")
    ramp = max(1.0, n / 100)
    start = time.monotonic() + 1.0  # the load processes import in the meantime
    # warm-up after the last client connected: a joiner's wait for a keyframe is not a stall
    w0 = start + ramp + max(1.0, warmup_s)
    w1 = w0 + seconds
    at = [start + ramp * i / n for i in range(n)]
    paths = [run.path(i % channels) for i in range(n)]
    base = {
        "mode": "many",
        "host": HOST,
        "port": run.port,
        "w0": w0,
        "w1": w1,
        "deadline": w1 + 5,
        "buf": 256 << 10,
    }
    loads = [spawn_load({**base, "paths": paths[k::procs], "at": at[k::procs]}) for k in range(procs)]
    joiner = None
    if joins:
        gap = min(0.6, max(0.05, (seconds - 2 - join_read_s) / joins))
        jat = [w0 + 1.0 + gap * k for k in range(joins)]
        jpaths = [run.path((k * 7) % channels) for k in range(joins)]
        joiner = spawn_load(
            {
                **base,
                "mode": "join",
                "paths": jpaths,
                "at": jat,
                "deadline": w1,
                "buf": 64 << 10,
                "join_read_s": join_read_s,
            }
        )
    sampler = Sampler(lambda: watched(run))
    sampler.start()
    profile: subprocess.Popen[bytes] | None = None
    try:
        sleep_until(w0)
        pids = watched(run)
        c0, o0 = cpu_of(pids), cpu_s(origin.proc.pid)
        g0, m0 = cpu_of([p.pid for p in loads]), machine_cpu()
        origin.stats("?ticks")
        if pyspy is not None and run.main_pid is not None:
            profile = subprocess.Popen(
                [
                    pyspy[0],
                    "record",
                    "-p",
                    str(run.main_pid),
                    "-d",
                    str(int(seconds)),
                    "-r",
                    str(PYSPY_HZ),
                    "-f",
                    "raw",
                    "--nolineno",
                    "--nonblocking",
                    "-o",
                    str(pyspy[1]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        sleep_until((w0 + w1) / 2)
        mid = origin.stats()
        sleep_until(w1)
        c1, o1 = cpu_of(pids), cpu_s(origin.proc.pid)
        g1, m1 = cpu_of([p.pid for p in loads]), machine_cpu()
        ticks = origin.stats("?ticks")
        hwm = sum(status_kb(p, "VmHWM") for p in watched(run))
        results = [collect(p, 60) for p in loads]
        jres = collect(joiner, 60)["clients"] if joiner is not None else []
        end = origin.stats()
    finally:
        peak = sampler.stop()
        for p in [*loads, *([joiner] if joiner else [])]:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        if profile is not None:
            try:
                profile.wait(seconds + 20)
            except subprocess.TimeoutExpired:
                profile.kill()
                profile.wait(5)
    clients = [c for r in results for c in r["clients"]]
    lat: Counter[int] = Counter()
    for r in results:
        lat.update({int(k): v for k, v in r["lat"].items()})
    rates = [c["win_bytes"] / seconds for c in clients]
    kept = sum(1 for r in rates if r >= KEPT * RATE)
    gaps = [c["max_gap_ms"] for c in clients if c["first_ms"] is not None]
    slow = [c for c in clients if c["max_gap_ms"] >= 50]
    when = Counter(c["max_gap_at"] for c in slow)
    delivered = sum(c["win_bytes"] for c in clients)
    is_proxy = run.target.kind != "origin"
    wall = w1 - w0
    ttfb = [j["first_ms"] for j in jres if j["first_ms"] is not None and j["status"] == 200]
    heads = [j["head_ms"] for j in jres if j["head_ms"] is not None and j["status"] == 200]
    kf = [j["keyframe_ms"] for j in jres if j["keyframe_ms"] is not None and j["status"] == 200]
    return {
        "clients": n,
        "channels": channels,
        "seconds": seconds,
        "kept_rate_fraction": round(kept / n, 4),
        "clients_below_97pct": n - kept,
        "client_rate_MBps": {
            "min": round(min(rates) / 1e6, 3),
            "median": round(statistics.median(rates) / 1e6, 3),
        },
        "worst_stall_ms": max(gaps, default=None),
        "stall_p99_ms": pct(gaps, 99),
        "worst_stall_incl_startup_ms": max((c["max_gap_all_ms"] for c in clients), default=None),
        "clients_with_stall_over_50ms": len(slow),
        "stall_over_50ms_at_s": [{"at_s": t, "clients": k} for t, k in when.most_common(5)],
        "origin_max_tick_gap_ms": ticks["max_tick_gap_ms"],
        "machine_cpu_pct": round((m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * 100 * (os.cpu_count() or 1), 1),
        "loadgen_cpu_pct": round((g1 - g0) / wall * 100, 1),
        "relay_events": run.event_counts(),
        "errors": sum(1 for c in clients if c["status"] != 200 or c["err"] not in (None,)),
        "proxy_cpu_pct": round((c1 - c0) / wall * 100, 1) if is_proxy else None,
        "proxy_cpu_s_per_GB": round((c1 - c0) / (delivered / 1e9), 3) if is_proxy and delivered else None,
        "proxy_rss_peak_MB": round(max(hwm, peak) / 1024, 1) if is_proxy else None,
        "proxy_rss_sampled_peak_MB": round(peak / 1024, 1) if is_proxy else None,
        "origin_cpu_pct": round((o1 - o0) / wall * 100, 1),
        "origin_connections": {
            "open_mid_window": mid["open"],
            "peak_open": end["peak_open"],
            "accepted": end["accepted"],
        },
        "delivered_MBps": round(delivered / wall / 1e6, 1),
        "chunk_latency_ms": {
            "p50": hist_pct(lat, 50),
            "p99": hist_pct(lat, 99),
            "max": hist_pct(lat, 100),
            "samples": sum(lat.values()),
        },
        "join": {
            "n": len(jres),
            "ok": len(ttfb),
            "ttfb_ms_median": round(statistics.median(ttfb), 2) if ttfb else None,
            "ttfb_ms_p90": pct(ttfb, 90),
            "head_ms_median": round(statistics.median(heads), 2) if heads else None,
            "keyframe_ms_median": round(statistics.median(kf), 2) if kf else None,
            "keyframe_found": len(kf),
        }
        if joins
        else None,
    }


def summarize_profile(raw: Path, seconds: float, top: int = 15) -> dict[str, Any]:
    """Self and inclusive time per function from py-spy's raw (collapsed) output."""
    if not raw.exists():
        return {"error": "py-spy wrote nothing"}
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [
            f.split(" (", 1)[0] + " (" + Path(f.split(" (", 1)[1].rstrip(")")).name + ")" if " (" in f else f
            for f in stack.split(";")
        ]
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    for f in [f for f, n in incl.items() if n >= 0.99 * total]:
        del incl[f]  # the stack's root (runpy, cli, asyncio.run): 100 % by definition
    possible = seconds * PYSPY_HZ

    def fmt(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": f, "pct_of_busy": round(n / total * 100, 1), "cpu_pct": round(n / possible * 100, 1)}
            for f, n in c.most_common(top)
        ]

    return {
        "samples": total,
        "busy_pct_of_one_core": round(total / possible * 100, 1),
        "self": fmt(own),
        "inclusive": fmt(incl),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def check(value: float | None, ok: Callable[[float], bool], target: str) -> dict[str, Any]:
    return {"value": value, "target": target, "pass": None if value is None else bool(ok(value))}


def evaluate(single: dict[str, Any], load: dict[str, Any], relay: str) -> dict[str, Any]:
    s, n = single.get(relay, {}), single.get("nginx", {})
    lr, ln = load.get(relay, {}), load.get("nginx", {})
    kf_r = ratio(
        (lr.get("join") or {}).get("keyframe_ms_median"), (ln.get("join") or {}).get("keyframe_ms_median")
    )
    return {
        "single_stream_MBps_vs_nginx": check(
            ratio(s.get("MB_s"), n.get("MB_s")), lambda v: v >= 1.0, ">= 1.0"
        ),
        "cpu_s_per_GB_vs_nginx": check(
            ratio(s.get("cpu_s_per_GB"), n.get("cpu_s_per_GB")), lambda v: v <= 1.0, "<= 1.0"
        ),
        "clients_kept_97pct": check(lr.get("kept_rate_fraction"), lambda v: v >= 1.0, "all (1.0)"),
        "worst_stall_ms": check(lr.get("worst_stall_ms"), lambda v: v < 50, "< 50"),
        "load_cpu_vs_nginx": check(
            ratio(lr.get("proxy_cpu_pct"), ln.get("proxy_cpu_pct")), lambda v: v <= 1.2, "<= 1.2"
        ),
        "rss_MB": check(lr.get("proxy_rss_peak_MB"), lambda v: v <= 75, "<= 75 (at 200 streams)"),
        "join_ttfb_vs_nginx": check(
            ratio((lr.get("join") or {}).get("ttfb_ms_median"), (ln.get("join") or {}).get("ttfb_ms_median")),
            lambda v: v <= 1.3,
            "<= 1.3",
        ),
        "join_keyframe_vs_nginx (info)": {"value": kf_r, "target": "none (time to a decodable start)"},
    }


MEDIA_SECONDS = 12  # both media are 12 s long


def media(kind: str) -> tuple[Path, float]:
    """The looped file and its GOP length in media seconds."""
    if kind == "hd":  # 720p H.264/AAC, 5 Mbit/s CBR mux, 2 s GOP: an 8 Mbit/s channel's PES density
        from bench.splice import HD_SECONDS, hd_media

        assert HD_SECONDS == MEDIA_SECONDS
        return hd_media()[0], 2.0
    from tests.media import make_ts  # 320x240 H.264/AAC at ~0.55 Mbit/s, 1 s GOP: 15x denser in PES

    return make_ts(MEDIA_SECONDS), 1.0


def main(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    ts, gop_media_s = media(args.media)
    gop_wall_s = gop_media_s * ts.stat().st_size / MEDIA_SECONDS / RATE  # a GOP's length at RATE
    join_read_s = round(max(0.3, 1.3 * gop_wall_s), 2)
    warmup_s = round(max(1.0, 1.5 * gop_wall_s), 2)  # late joiners wait for a keyframe before the window
    nginx = ensure_nginx() if "nginx" in args.targets else None
    pyspy_bin = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pyspy_ok = not args.no_profile and Path(pyspy_bin).exists()
    targets = [Target("origin", "origin")]
    if nginx:
        targets.append(Target("nginx", "nginx"))
    targets += [
        Target("relay (splice on)", "relay", True),
        Target("relay (splice, no frame hold)", "relay", True, frame_hold=False),
        Target("relay (splice off)", "relay", False),
    ]
    keys = {
        "origin": "origin",
        "nginx": "nginx",
        "relay (splice on)": "splice",
        "relay (splice, no frame hold)": "nohold",
        "relay (splice off)": "nosplice",
    }
    targets = [t for t in targets if keys[t.name] in args.targets]
    for key, values in args.relay_set:  # each relay target once per value of the setting
        targets = [
            *(t for t in targets if t.kind != "relay"),
            *(
                Target(f"{t.name} [{key}={v}]", t.kind, t.splice, t.frame_hold, {**t.overrides, key: v})
                for t in targets
                if t.kind == "relay"
                for v in values
            ),
        ]
    points_only = args.points is not None
    if points_only:  # only these curve points: no single stream, no main load, no profile
        args.curve = args.points
    curve_points = [p for p in args.curve if points_only or p != args.clients]
    max_channels = max([args.channels, *(max(1, p // 4) for p in args.curve)])
    single: dict[str, Any] = {}
    load: dict[str, Any] = {}
    curve: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    budget = 3600.0
    origin = OriginProc(ts, budget)
    progress = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    try:
        with tempfile.TemporaryDirectory(prefix="bench-throughput-") as d:
            tmp = Path(d)
            for t in [] if points_only else targets:
                progress(f"single stream: {t.name}")
                with start_target(t, tmp, origin, nginx, max_channels) as run:
                    single[t.name] = run_single(run, origin, args.single_s, args.single_bytes)
            if args.single_only:
                return _single_report(single, time.perf_counter() - t_start)
            for t in [] if points_only else targets:
                progress(
                    f"load {args.clients} clients / {args.channels} channels / {args.seconds} s: {t.name}"
                )
                with start_target(t, tmp, origin, nginx, max_channels) as run:
                    load[t.name] = run_many(
                        run,
                        origin,
                        args.clients,
                        args.channels,
                        args.seconds,
                        procs=args.load_procs,
                        warmup_s=warmup_s,
                        joins=args.joins,
                        join_read_s=join_read_s,
                    )
            for n in sorted({*curve_points, *([] if points_only else [args.clients])}):
                row: dict[str, Any] = {"clients": n, "channels": max(1, n // 4)}
                runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
                # repetitions alternate the targets (A B C A B C ...), so drift hits them alike
                for rep in range(1 if n == args.clients and not points_only else args.reps):
                    for t in targets:
                        if n == args.clients and not points_only:
                            runs[t.name].append(load[t.name])
                            continue
                        progress(f"curve {n} clients, repetition {rep + 1}/{args.reps}: {t.name}")
                        try:
                            with start_target(t, tmp, origin, nginx, max_channels) as run:
                                r = run_many(
                                    run,
                                    origin,
                                    n,
                                    max(1, n // 4),
                                    args.curve_s,
                                    procs=args.load_procs,
                                    warmup_s=warmup_s,
                                    joins=0,
                                )
                        except RuntimeError as e:
                            runs[t.name].append({"error": str(e)[:500]})
                            continue
                        runs[t.name].append(r)
                for t in targets:
                    row[t.name] = _curve_cell(runs[t.name])
                curve.append(row)
            if pyspy_ok and not points_only:
                for t in targets:
                    if t.kind != "relay":
                        continue
                    progress(f"py-spy on {t.name} under {args.clients} clients")
                    raw = tmp / f"pyspy-{t.splice}-{t.frame_hold}.txt"
                    with start_target(t, tmp, origin, nginx, max_channels) as run:
                        r = run_many(
                            run,
                            origin,
                            args.clients,
                            args.channels,
                            args.profile_s,
                            procs=args.load_procs,
                            warmup_s=warmup_s,
                            joins=0,
                            pyspy=(pyspy_bin, raw),
                        )
                    profile[t.name] = {
                        "load_while_sampled": {
                            k: r[k] for k in ("proxy_cpu_pct", "kept_rate_fraction", "worst_stall_ms")
                        },
                        **summarize_profile(raw, args.profile_s),
                    }
            else:
                profile = {"skipped": "py-spy not installed (pip install py-spy) or --no-profile"}
    finally:
        origin.stop()
    relays = [t.name for t in targets if t.kind == "relay"]
    base_p99 = load["origin"]["chunk_latency_ms"]["p99"] if "origin" in load else None
    return {
        "bench": "throughput",
        "quick": args.quick,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "nginx": _nginx_version(nginx)},
        "setup": {
            "media": ts.name,
            "media_kind": args.media,
            "media_Mbit_s": round(ts.stat().st_size * 8 / MEDIA_SECONDS / 1e6, 2),
            "gop_at_rate_s": round(gop_wall_s, 3),
            "join_read_s": join_read_s,
            "warmup_s": warmup_s,
            "media_bytes": ts.stat().st_size,
            "rate_Mbit_s": RATE * 8 / 1e6,
            "origin_tick_ms": TICK_S * 1000,
            "client_SO_RCVBUF": RCVBUF,
            "load_processes": args.load_procs,
            "kept_threshold": KEPT,
            "chunk_latency": "origin write (a timestamp in a video packet's payload) -> client read, "
            "both CLOCK_MONOTONIC",
        },
        "single_stream": single,
        "load": load,
        "added_chunk_latency_p99_ms": {
            k: round(v["chunk_latency_ms"]["p99"] - base_p99, 2)
            for k, v in load.items()
            if k != "origin" and v["chunk_latency_ms"]["p99"] is not None and base_p99 is not None
        },
        "curve": curve,
        "profile": profile,
        "targets": {r: evaluate(single, load, r) for r in relays}
        if nginx and not points_only
        else "nginx unavailable or --points: no ratios",
        "seconds": round(time.perf_counter() - t_start, 1),
    }


CURVE_KEYS = (
    "proxy_cpu_pct",
    "proxy_rss_peak_MB",
    "kept_rate_fraction",
    "worst_stall_ms",
    "errors",
    "delivered_MBps",
    "origin_cpu_pct",
    "machine_cpu_pct",
)


def _curve_cell(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One curve point of one target: the median of each figure over its repetitions, and each run."""
    ok = [r for r in runs if "error" not in r]
    flat = [
        {
            **{k: r[k] for k in CURVE_KEYS},
            "origin_connections": r["origin_connections"]["peak_open"],
            "chunk_latency_p50_ms": r["chunk_latency_ms"]["p50"],
            "chunk_latency_p99_ms": r["chunk_latency_ms"]["p99"],
        }
        for r in ok
    ]
    cell: dict[str, Any] = {"repetitions": len(flat)}
    for k in flat[0] if flat else ():
        xs = [f[k] for f in flat if f[k] is not None]
        cell[k] = round(statistics.median(xs), 3) if xs else None
    if len(flat) > 1:
        cell["runs"] = {
            k: [f[k] for f in flat] for k in ("proxy_cpu_pct", "worst_stall_ms", "chunk_latency_p99_ms")
        }
    errors = [r["error"] for r in runs if "error" in r]
    if errors:
        cell["failed_runs"] = errors
    return cell


def _single_report(single: dict[str, Any], seconds: float) -> dict[str, Any]:
    """``--single-only``: the single-stream rows and their ratios to nginx, for quick A/B runs."""
    ng = single.get("nginx", {})
    ratios = {
        name: {
            "MB_s_vs_nginx": round(r["MB_s"] / ng["MB_s"], 2) if ng.get("MB_s") and r["MB_s"] else None,
            "cpu_s_per_GB_vs_nginx": round(r["cpu_s_per_GB"] / ng["cpu_s_per_GB"], 2)
            if ng.get("cpu_s_per_GB") and r.get("cpu_s_per_GB")
            else None,
        }
        for name, r in single.items()
        if name.startswith("relay")
    }
    return {"bench": "throughput", "single_stream": single, "vs_nginx": ratios, "seconds": round(seconds, 1)}


def _nginx_version(nginx: str | None) -> str | None:
    if nginx is None:
        return None
    p = subprocess.run([nginx, "-v"], capture_output=True, text=True, check=False)
    return (p.stderr or p.stdout).strip().split("/")[-1] or None


def _run_role(argv: list[str]) -> None:
    import uvloop

    role = argv[0]
    if role == "_origin":
        ap = argparse.ArgumentParser()
        ap.add_argument("--ts", type=Path, required=True)
        ap.add_argument("--rate", type=float, default=RATE)
        ap.add_argument("--port", type=int, default=0)
        ap.add_argument("--max-s", type=float, default=3600)
        a = ap.parse_args(argv[1:])
        uvloop.run(origin_main(a.port, a.ts, a.rate, a.max_s))
    else:
        spec = json.loads(argv[1])
        out = uvloop.run(asyncio.wait_for(load_main(spec), max(1.0, spec["deadline"] + 5 - time.monotonic())))
        tmp = spec["out"] + ".part"
        Path(tmp).write_text(json.dumps(out))
        os.replace(tmp, spec["out"])  # whole or absent: never a cut JSON


def _value(text: str) -> Any:
    """A --relay-set value: JSON when it parses (numbers, true/false), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def cli() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("_origin", "_load"):
        _run_role(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="40 clients, 10 channels, 8 s; short curve")
    ap.add_argument("--clients", type=int)
    ap.add_argument("--channels", type=int)
    ap.add_argument("--seconds", type=float)
    ap.add_argument(
        "--curve", type=lambda s: [int(x) for x in s.split(",") if x], help="e.g. 10,50,100,200,400"
    )
    ap.add_argument("--curve-s", type=float)
    ap.add_argument(
        "--points",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="run only these curve points (client counts), e.g. 400,800: no single stream, load or profile",
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions per curve point; the median is reported")
    ap.add_argument(
        "--relay-set",
        action="append",
        default=[],
        type=lambda s: (s.split("=", 1)[0], [_value(v) for v in s.split("=", 1)[1].split(",")]),
        help="run each relay target once per value, e.g. server.write_interval_ms=0,20,40 (repeatable)",
    )
    ap.add_argument("--single-s", type=float)
    ap.add_argument("--single-bytes", type=float, default=2e9)
    ap.add_argument("--joins", type=int, default=20)
    ap.add_argument("--load-procs", type=int, default=2)
    ap.add_argument("--profile-s", type=float)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--single-only", action="store_true", help="only the single-stream rows (quick A/B)")
    ap.add_argument(
        "--targets",
        type=lambda s: s.split(","),
        default=["origin", "nginx", "splice", "nosplice"],
        help="a subset of origin,nginx,splice,nohold,nosplice (the ratios need nginx and a relay)",
    )
    ap.add_argument(
        "--media",
        choices=("hd", "sd"),
        default="hd",
        help="hd: 720p 5 Mbit/s, 2 s GOP (bench/splice.py); sd: tests.media.make_ts(12), ~0.55 Mbit/s",
    )
    a = ap.parse_args()
    q = a.quick
    defaults = {
        "clients": (200, 40),
        "channels": (50, 10),
        "seconds": (30.0, 8.0),
        "curve": ([10, 50, 100, 200, 400], [10]),
        "curve_s": (12.0, 4.0),
        "single_s": (10.0, 4.0),
        "profile_s": (20.0, 5.0),
    }
    for k, (full, quick) in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, quick if q else full)
    if a.quick and a.joins == 20:
        a.joins = 10
    out = main(a)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    cli()
