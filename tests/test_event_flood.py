"""Event floods: clients that keep tuning a channel with no working stream. Before, each tune wrote two
events to both sinks, an ERROR line and a webhook (~1,300 events/s from three client threads). Now
identical events are coalesced into one record per window carrying `repeated`, tunes of a failing
channel are rate-limited per client address (429 + Retry-After), and the event log, the log lines and
the webhooks stay bounded, while a real failover on another channel is written at once, every time.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, read_events, recorder, running_relay, until

WINDOW_S = 1.0
FLOOD_S = 3.0


async def tune(port: int, address: str, path: str = "/stream/dead") -> tuple[int, bytes]:
    """One tune from `address` (a loopback address of its own): (status, whole response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data


async def flood(port: int, clients: int, seconds: float) -> list[tuple[int, bytes]]:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    out: list[tuple[int, bytes]] = []

    async def one(i: int) -> None:
        while loop.time() < end:
            out.append(await tune(port, f"127.0.0.{10 + i}"))

    await asyncio.gather(*(one(i) for i in range(clients)))
    return out


class Webhook:
    """A webhook receiver on 127.0.0.1 counting the events POSTed to it."""

    def __init__(self) -> None:
        self.posts = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Webhook:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length"))
        )
        await reader.readexactly(length)
        self.posts += 1
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


@pytest.mark.parametrize("clients", [3, 30])
async def test_given_clients_flooding_a_dead_channel_then_events_log_lines_and_webhooks_stay_bounded(
    provider: FakeProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture, clients: int
):
    provider.set(9, fp.status(503))
    async with Webhook() as hook:
        cfg = config_for(tmp_path, provider, {"dead": [("a", 9)]})
        cfg["limits"] = {"coalesce_window_s": WINDOW_S, "failing_tune_burst": 2, "failing_tune_every_s": 1.0}
        cfg["notify"] = [{"url": hook.url}]
        caplog.set_level(logging.INFO, logger="relay.storage.eventlog")
        async with running_relay(cfg, tmp_path) as relay:
            answers = await flood(relay.port, clients, FLOOD_S)
            await asyncio.sleep(WINDOW_S + 0.2)  # the last window's record
            await relay.events.flush()
            exposition = relay.metrics.exposition().decode()
            await until(lambda: relay.notifier.sent >= 2, what="webhooks delivered")
            await asyncio.sleep(0.5)
            posts = hook.posts

    unavailable = [a for s, a in answers if s == 503]
    limited = [a for s, a in answers if s == 429]
    assert len(unavailable) + len(limited) == len(answers) and len(answers) > 50
    assert all(b"807 No Video Data" in a for a in unavailable)
    assert limited and all(b"\r\nRetry-After: " in a for a in limited)
    events = read_events(tmp_path)
    windows = FLOOD_S / WINDOW_S + 2
    for kind in ("exhausted", "session_end", "tune_refused"):
        records = [e for e in events if e["event"] == kind]
        assert 1 <= len(records) <= windows + 1, (kind, len(records))
        assert "repeated" not in records[0] and any(e.get("repeated", 1) > 1 for e in records)
    # nothing is lost from the counts: every exhaustion and every refusal is in some record's `repeated`
    exhaustions = sum(e.get("repeated", 1) for e in events if e["event"] == "exhausted")
    ends = sum(e.get("repeated", 1) for e in events if e["event"] == "session_end")
    assert exhaustions == ends  # one session each; tunes at the same moment share one, so <= the 503s
    assert sum(e.get("repeated", 1) for e in events if e["event"] == "tune_refused") == len(limited)
    assert f"relay_exhaustions_total {float(exhaustions)}" in exposition
    assert f"relay_tunes_refused_total {float(len(limited))}" in exposition
    # each address: its burst, then one per failing_tune_every_s (the first tunes find it not yet failing)
    assert exhaustions <= len(unavailable) and exhaustions <= 2 + clients * (2 + FLOOD_S / 1.0 + 1)
    error_lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(error_lines) <= windows + 1
    assert 1 <= posts <= windows + 1  # webhooks: the exhausted records (error); info is not posted


async def test_given_a_flood_then_real_failovers_on_another_channel_are_written_at_once_every_time(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(9, fp.status(503))
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1), ("b", 2), ("c", 3)], "dead": [("d", 9)]})
    cfg["limits"] = {"coalesce_window_s": 10.0}
    async with running_relay(cfg, tmp_path) as relay:
        events = recorder(relay)
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(20_000)
        loop = asyncio.get_running_loop()
        flooding = asyncio.create_task(flood(relay.port, 10, 2.5))
        await asyncio.sleep(0.3)
        for n, sid in enumerate((1, 2), start=1):  # two failovers within one window: two events
            t0 = loop.time()
            await provider.drop(sid)
            await until(lambda n=n: sum(e["event"] == "failover" for e in events) == n, what=f"failover {n}")
            assert loop.time() - t0 < 1.0  # written as it happened, not at a window's end
            await c.wait_bytes(len(c.body) + 20_000)
        answers = await flooding
        assert any(s == 429 for s, _ in answers) and any(s == 503 for s, _ in answers)
        failovers = [e for e in events if e["event"] == "failover"]
        assert [(e["from_stream"], e["to_stream"]) for e in failovers] == [("a/1", "b/2"), ("b/2", "c/3")]
        assert all("repeated" not in e and e["switch_ms"] < 2000 for e in failovers)
        assert c.max_gap(after=c.arrivals[0][0]) < 2.0 and not c.closed
        await c.close()
        await relay.events.flush()
    written = [e["event_id"] for e in read_events(tmp_path) if e["event"] == "failover"]
    assert written == [e["event_id"] for e in failovers]
