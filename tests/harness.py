"""Test helpers: a relay running in-process on 127.0.0.1 and a raw HTTP client that checks framing."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from relay.config import parse
from relay.shell.app import Relay
from tests.fake_provider import FakeProvider

TS = 188


def config_for(
    tmp: Path,
    provider: FakeProvider,
    channels: dict[str, Sequence[tuple[str, int]]],
    *,
    accounts: Sequence[str] = ("a", "b", "c", "d"),
    inactive: Sequence[str] = (),
    urls: dict[str, str] | None = None,
    max_connections: dict[str, int] | None = None,
    **failover: float,
) -> dict[str, Any]:
    """A config dict: every account points at `provider` unless `urls` says otherwise."""
    return {
        "server": {"host": "127.0.0.1", "port": 0, "linger_s": 0},
        "storage": {"database": str(tmp / "relay.db"), "events": str(tmp / "events.jsonl")},
        "failover": failover,
        "discovery": {"udp": False},
        "sync": {"on_start": False},  # the account sync has its own tests; here it would only add requests
        "accounts": [
            {
                "name": a,
                "url": (urls or {}).get(a, provider.url),
                "username": provider.username,
                "password": provider.password,
                "active": a not in inactive,
                "max_connections": (max_connections or {}).get(a, 1),
            }
            for a in accounts
        ],
        "channels": [
            {
                "id": cid,
                "name": cid.upper(),
                "number": str(100 + i),
                "streams": [
                    {"account": acc, "stream_id": sid, "priority": p} for p, (acc, sid) in enumerate(s)
                ],
            }
            for i, (cid, s) in enumerate(channels.items())
        ],
    }


@asynccontextmanager
async def running_relay(cfg: dict[str, Any], tmp: Path) -> AsyncIterator[Relay]:
    relay = Relay(parse(cfg, base_dir=tmp))
    await relay.start()
    try:
        yield relay
    finally:
        await relay.stop()


def recorder(relay: Relay) -> list[dict[str, Any]]:
    """Every event the relay emits from now on, as it is emitted."""
    events: list[dict[str, Any]] = []
    assert relay.events is not None
    relay.events.listeners.append(events.append)
    return events


def read_events(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "events.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass
class StreamClient:
    """Reads a chunked (or close-delimited) response and checks every chunk's framing as it goes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    raw_head: bytes = b""
    body: bytearray = field(default_factory=bytearray)
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (loop time, body length after)
    ended: bool = False  # terminating chunk seen
    closed: bool = False  # connection closed (with or without the terminating chunk)
    _task: asyncio.Task[None] | None = None

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    @property
    def chunked(self) -> bool:
        return (self.header("transfer-encoding") or "").lower() == "chunked"

    def start_reading(self) -> None:
        self._task = asyncio.create_task(self._read_body())

    async def _read_body(self) -> None:
        clock = time.monotonic  # the loop's clock base, without uvloop's millisecond rounding
        try:
            if not self.chunked:
                while data := await self.reader.read(65536):
                    self.body += data
                    self.arrivals.append((clock(), len(self.body)))
                return
            while True:
                line = await self.reader.readuntil(b"\r\n")
                size = int(line[:-2], 16)  # a bad size line raises: the test fails loudly
                if size == 0:
                    assert await self.reader.readexactly(2) == b"\r\n"
                    self.ended = True
                    return
                data = await self.reader.readexactly(size)
                assert await self.reader.readexactly(2) == b"\r\n", "chunk not terminated by CRLF"
                self.body += data
                self.arrivals.append((clock(), len(self.body)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed = True

    async def wait_bytes(self, n: int, timeout: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.body) < n:
            if self.closed:
                raise AssertionError(f"stream closed after {len(self.body)} bytes, wanted {n}")
            if loop.time() > deadline:
                raise AssertionError(f"only {len(self.body)} bytes after {timeout}s, wanted {n}")
            await asyncio.sleep(0.01)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        assert self._task is not None
        await asyncio.wait_for(asyncio.shield(self._task), timeout)

    def first_arrival_after(self, t: float) -> float | None:
        for at, _ in self.arrivals:
            if at > t:
                return at
        return None

    def max_gap(self, after: float = 0.0) -> float:
        times = [at for at, _ in self.arrivals if at >= after]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def close(self) -> None:
        self.writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def open_stream(
    port: int, path: str, *, method: str = "GET", version: str = "1.1", source: str | None = None
) -> StreamClient:
    """`source`: the local address to connect from (any 127.x.y.z), so tests can be several clients."""
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
    writer.write(
        f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: test\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    c = StreamClient(reader, writer, int(lines[0].split()[1]), raw_head=head)
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            c.headers.append((k.strip(), v.strip()))
    if c.status == 200 and method == "GET":
        c.start_reading()
    return c


async def request(port: int, raw: bytes, *, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    out = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while data := await reader.read(65536):
                out += data
    except (TimeoutError, ConnectionError):
        pass
    writer.close()
    return bytes(out)


def whole_packets(body: bytes | bytearray) -> bool:
    """Every 188th byte is a sync byte: the client never got a torn packet."""
    return len(body) % TS == 0 and all(body[i] == 0x47 for i in range(0, len(body), TS))


async def until(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def serve_process(config: Path, log: Path) -> tuple[asyncio.subprocess.Process, int]:
    """`relay serve --config` as a user runs it, its log appended to `log`; returns it and its port."""
    root = Path(__file__).resolve().parent.parent
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "serve", "--config", str(config),
            stdout=out, stderr=out, cwd=root,
        )  # fmt: skip
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        text = log.read_bytes()[start:]
        if m := re.search(rb"listening on http://127\.0\.0\.1:(\d+)", text):
            return proc, int(m.group(1))
        if proc.returncode is not None or loop.time() > deadline:
            raise AssertionError(f"relay did not start: {text[-2000:].decode(errors='replace')}")
        await asyncio.sleep(0.05)
