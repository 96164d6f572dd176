"""The seed's acceptance criteria 1-5 end to end: real sockets, a real fake provider, the real relay.

Given/When/Then in each name. Timings are shortened through config where a test would otherwise
wait (stall_timeout_s, upgrade_after_s); one test keeps the 5 s default stall to show the default.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.harness import (
    config_for,
    open_stream,
    read_events,
    running_relay,
    until,
    whole_packets,
)

CH = {"ch1": [("a", 1), ("b", 2), ("c", 3)]}


def events_named(tmp: Path, name: str) -> list[dict]:
    return [e for e in read_events(tmp) if e["event"] == name]


async def flushed(relay) -> None:
    await relay.events.flush()


# ---- AC1: detection and fast switch ------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    ["drop", "reset", "stall"],
)
async def test_given_active_stream_when_primary_fails_midstream_then_backup_bytes_arrive_within_budget(
    provider: FakeProvider, tmp_path: Path, how: str
):
    cfg = config_for(tmp_path, provider, CH, stall_timeout_s=1.0)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        assert c.status == 200
        await c.wait_bytes(50_000)
        if how == "stall":
            t_fail = provider.stall(1)
        else:
            t_fail = await getattr(provider, how)(1)
        await until(lambda: provider.active(2) == 1, what="backup connection")
        n = len(c.body)
        await c.wait_bytes(n + 50_000)
        first = c.first_arrival_after(t_fail + (0.9 if how == "stall" else 0.0))
        assert first is not None
        detection = 1.0 if how == "stall" else 0.0
        assert first - t_fail - detection < 2.0
        await flushed(relay)
        ev = events_named(tmp_path, "failover")
        assert len(ev) == 1
        assert (
            ev[0]["reason"]
            == {"stall": "StreamStall", "drop": "StreamError", "reset": "ConnectionError"}[how]
        )
        assert ev[0]["from_stream"] == "a/1" and ev[0]["to_stream"] == "b/2"
        assert ev[0]["switch_ms"] < 2000
        assert whole_packets(c.body)
        await c.close()


async def test_given_default_config_when_primary_stalls_then_failover_after_5s_stall(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(20_000)
        t_fail = provider.stall(1)
        await until(lambda: provider.active(2) == 1, timeout=8, what="backup connection")
        t_switch = asyncio.get_running_loop().time()
        assert 4.9 <= t_switch - t_fail < 5.0 + 2.0
        await c.wait_bytes(len(c.body) + 20_000)
        await c.close()


@pytest.mark.parametrize("code", [401, 403, 404, 500, 503])
async def test_given_primary_answers_http_error_then_backup_is_relayed_and_status_logged(
    provider: FakeProvider, tmp_path: Path, code: int
):
    provider.set(1, fp.status(code))
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        assert c.status == 200
        await c.wait_bytes(20_000)
        assert provider.active(2) == 1 and provider.active(1) == 0
        await c.close()
        await flushed(relay)
    start = events_named(tmp_path, "session_start")[0]
    assert start["to_stream"] == "b/2" and start["attempted"] == ["a/1", "b/2"]


async def test_given_primary_refuses_connection_then_backup_immediately(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH, urls={"a": f"http://127.0.0.1:{fp.closed_port()}"})
    async with running_relay(cfg, tmp_path) as relay:
        t0 = asyncio.get_running_loop().time()
        c = await open_stream(relay.port, "/stream/ch1")
        assert c.status == 200
        assert asyncio.get_running_loop().time() - t0 < 1.0
        await c.wait_bytes(10_000)
        await c.close()


async def test_given_primary_black_holed_at_start_then_backup_after_connect_timeout(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.blackhole())
    cfg = config_for(tmp_path, provider, CH, connect_timeout_s=0.5)
    async with running_relay(cfg, tmp_path) as relay:
        t0 = asyncio.get_running_loop().time()
        c = await open_stream(relay.port, "/stream/ch1")
        waited = asyncio.get_running_loop().time() - t0
        assert c.status == 200
        assert 0.4 < waited < 2.0  # waited for the better stream, up to its connect timeout
        await c.wait_bytes(10_000)
        await until(lambda: provider.active(1) == 0, what="black hole closed")
        await c.close()


async def test_given_black_holed_first_backup_when_primary_drops_then_second_backup_within_budget(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(20_000)
        provider.set(2, fp.blackhole())
        t_fail = await provider.drop(1)
        await until(lambda: provider.active(3) == 1, what="second backup")
        await c.wait_bytes(len(c.body) + 20_000)
        first = c.first_arrival_after(t_fail)
        assert first is not None and first - t_fail < 2.0
        await flushed(relay)
        ev = events_named(tmp_path, "failover")[0]
        assert ev["to_stream"] == "c/3" and ev["attempted"] == ["b/2", "c/3"]
        await until(lambda: provider.active(2) == 0, what="black-holed backup closed")
        await c.close()


# ---- AC1 / FR33: the client cannot tell ---------------------------------------------------------


async def test_given_failover_then_client_sees_one_unchanged_response_with_only_whole_packets(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        head = c.raw_head
        assert c.header("content-type") == "video/mp2t"
        assert c.chunked
        assert not [k for k, _ in c.headers if k.lower().startswith("x-")]
        await c.wait_bytes(30_000)
        await provider.drop(1)
        await c.wait_bytes(len(c.body) + 30_000)
        await provider.drop(2)
        await c.wait_bytes(len(c.body) + 30_000)
        assert not c.closed and not c.ended
        assert whole_packets(c.body)  # never a torn packet across a switch
        assert c.raw_head == head
        body = bytes(c.body)
        assert b"127.0.0.1" not in body and provider.password.encode() not in body
        await c.close()


async def test_given_http10_client_then_stream_is_close_delimited_and_still_fails_over(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1", version="1.0")
        assert c.status == 200 and not c.chunked
        await c.wait_bytes(20_000)
        await provider.drop(1)
        await c.wait_bytes(len(c.body) + 20_000)
        assert whole_packets(c.body[: len(c.body) - len(c.body) % 188])
        await c.close()


# ---- AC2: priority order, each failure logged ---------------------------------------------------


async def test_given_several_backups_when_failing_then_tried_in_stream_priority_order(
    provider: FakeProvider, tmp_path: Path
):
    chans = {"ch1": [("a", 1), ("b", 2), ("c", 3), ("d", 4)]}
    cfg = config_for(tmp_path, provider, chans)
    # the config lists them out of order; priority decides
    cfg["channels"][0]["streams"] = [
        {"account": "d", "stream_id": 4, "priority": 3},
        {"account": "b", "stream_id": 2, "priority": 1},
        {"account": "a", "stream_id": 1, "priority": 0},
        {"account": "c", "stream_id": 3, "priority": 2},
    ]
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(20_000)
        provider.set(2, fp.status(500))
        provider.set(3, fp.refuse())
        await provider.drop(1)
        await until(lambda: provider.active(4) == 1, what="fourth stream")
        await c.wait_bytes(len(c.body) + 20_000)
        await flushed(relay)
        ev = events_named(tmp_path, "failover")
        assert len(ev) == 1
        assert ev[0]["attempted"] == ["b/2", "c/3", "d/4"]
        assert ev[0]["to_stream"] == "d/4"
        first_conn = [c.stream_id for c in provider.conns if c.stream_id is not None]
        assert first_conn[:4] == [1, 2, 3, 4]
        await c.close()


async def test_given_inactive_account_then_its_streams_are_never_tried(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH, inactive=["a"])
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        await provider.drop(2)
        await until(lambda: provider.active(3) == 1, what="third stream")
        assert provider.connections[1] == 0
        await c.close()


async def test_given_redirecting_provider_then_redirect_followed_from_original_url_each_time(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.redirect(times=2))
    cfg = config_for(tmp_path, provider, CH, upgrade_after_s=0.5)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        assert provider.active(1) == 1
        targets = [t for t, _ in provider.requests if t.startswith(("/live/", "/lb/"))]
        assert targets[0].startswith("/live/") and targets[1].startswith("/lb/")
        await c.close()


async def test_given_redirect_loop_then_http_error_and_backup(provider: FakeProvider, tmp_path: Path):
    provider.set(1, fp.redirect(loop=True))
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        assert provider.active(2) == 1
        await c.close()


async def test_given_html_page_with_200_then_it_is_not_relayed_and_backup_wins(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.garbage_200())
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        assert b"<html" not in bytes(c.body)
        assert whole_packets(c.body)
        await c.close()


# ---- AC3: upgrade back -------------------------------------------------------------------------


async def test_given_on_backup_when_upgrade_time_passes_and_primary_is_back_then_upgrade(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH, upgrade_after_s=1.0)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        provider.set(1, fp.status(503))
        await provider.drop(1)
        await until(lambda: provider.active(2) == 1, what="backup")
        provider.set(1, fp.ok())  # the primary recovers
        await until(lambda: provider.active(1) == 1 and provider.active(2) == 0, timeout=5, what="upgrade")
        n = len(c.body)
        await c.wait_bytes(n + 20_000)
        assert whole_packets(c.body)
        await flushed(relay)
        up = events_named(tmp_path, "upgrade")
        assert len(up) == 1 and up[0]["from_stream"] == "b/2" and up[0]["to_stream"] == "a/1"
        assert up[0]["level"] == "info"
        await c.close()


async def test_given_on_backup_when_upgrade_fails_then_stay_and_retry_after_timer(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH, upgrade_after_s=0.6)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        provider.set(1, fp.status(503))
        await provider.drop(1)
        await until(lambda: provider.connections[1] >= 3, timeout=5, what="two upgrade probes")
        await flushed(relay)
        failed = events_named(tmp_path, "upgrade_failed")
        assert len(failed) >= 2
        assert failed[0]["reason"] == "HttpError" and failed[0]["http_status"] == 503
        assert provider.active(2) == 1  # stayed on the backup the whole time
        assert not c.closed
        await c.close()


# ---- AC4: everything fails -----------------------------------------------------------------------


async def test_given_every_stream_fails_at_start_then_503_opaque_and_error_event(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.status(404))
    provider.set(2, fp.status(500))
    cfg = config_for(tmp_path, provider, CH, urls={"c": f"http://127.0.0.1:{fp.closed_port()}"})
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        assert c.status == 503
        body = await c.reader.read()
        assert body == b"Stream unavailable\n"
        assert b"127.0.0.1" not in c.raw_head and b"alice" not in c.raw_head
        await flushed(relay)
    ev = events_named(tmp_path, "exhausted")
    assert len(ev) == 1 and ev[0]["level"] == "error"
    assert ev[0]["attempted"] == ["a/1", "b/2", "c/3"]


async def test_given_channel_without_backup_when_it_fails_then_503_at_once(
    provider: FakeProvider, tmp_path: Path
):
    provider.set(1, fp.status(503))
    cfg = config_for(tmp_path, provider, {"solo": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        t0 = asyncio.get_running_loop().time()
        c = await open_stream(relay.port, "/stream/solo")
        assert c.status == 503 and asyncio.get_running_loop().time() - t0 < 0.5


async def test_given_streaming_when_every_backup_fails_then_response_ends_and_error_event(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        provider.set(2, fp.status(500))
        provider.set(3, fp.blackhole())
        t = await provider.drop(1)
        await c.wait_closed(timeout=4)
        assert not c.ended  # closed without the last chunk: the response failed
        assert asyncio.get_running_loop().time() - t < 2.5
        await flushed(relay)
        ev = events_named(tmp_path, "exhausted")[0]
        assert ev["from_stream"] == "a/1" and ev["reason"] == "StreamError" and ev["level"] == "error"
        await until(lambda: provider.active_total() == 0, what="all upstreams closed")


# ---- AC5: events -------------------------------------------------------------------------------


async def test_given_failover_then_event_has_fields_in_jsonl_and_sqlite(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        provider.set(1, fp.status(503))
        await provider.drop(1)
        await until(lambda: provider.active(2) == 1, what="backup")
        await c.wait_bytes(len(c.body) + 10_000)
        await c.close()
        await until(lambda: not relay.sessions, what="session end")
        await flushed(relay)
    lines = read_events(tmp_path)
    fo = next(e for e in lines if e["event"] == "failover")
    for key in (
        "channel",
        "from_stream",
        "to_stream",
        "reason",
        "timestamp",
        "level",
        "attempted",
        "switch_ms",
    ):
        assert key in fo
    assert fo["channel"] == "ch1" and fo["level"] == "warn" and fo["category"] == "failover"
    ts = datetime.fromisoformat(fo["timestamp"].replace("Z", "+00:00"))
    assert ts.tzinfo is not None and fo["timestamp"].endswith("Z")
    assert [e["event"] for e in lines] == ["session_start", "failover", "session_end"]
    db = sqlite3.connect(tmp_path / "relay.db")
    rows = db.execute("SELECT level, category, message, details FROM event_log ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["info", "warn", "info"]
    import json

    assert [json.loads(r[3])["event_id"] for r in rows] == [e["event_id"] for e in lines]
    everything = (tmp_path / "events.jsonl").read_bytes() + b"".join(r[3].encode() for r in rows)
    assert provider.password.encode() not in everything
    assert b"/live/" not in everything
    db.close()
    for f in tmp_path.glob("relay.db*"):  # the database itself never holds a password
        assert provider.password.encode() not in f.read_bytes()


# ---- lifecycle and back-pressure -------------------------------------------------------------------


async def test_when_client_goes_away_then_upstream_closed_within_1s(provider: FakeProvider, tmp_path: Path):
    cfg = config_for(tmp_path, provider, CH)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        await c.close()
        await until(lambda: provider.active_total() == 0, timeout=1.0, what="upstream closed")
        await until(lambda: not relay.sessions, timeout=1.0, what="session gone")
        assert sum(relay.shared.slots.held.values()) == 0


async def test_given_client_that_stops_reading_then_upstream_is_paused_and_memory_bounded(
    ts_file: Path, tmp_path: Path
):
    async with FakeProvider(ts_file, rate_factor=50.0) as provider:
        cfg = config_for(tmp_path, provider, CH, stall_timeout_s=1.0)
        async with running_relay(cfg, tmp_path) as relay:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # or loopback autotuning hides it
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
            writer.write(b"GET /stream/ch1 HTTP/1.1\r\nHost: x\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.transport.pause_reading()  # a client that never reads again
            await asyncio.sleep(4.0)
            sent = provider.bytes_sent(1)
            await asyncio.sleep(1.5)
            # paused: the provider could not push more than socket buffers hold, and no stall failover
            assert provider.bytes_sent(1) - sent < 64 * 1024
            assert provider.active(1) == 1 and provider.connections[2] == 0
            writer.close()


async def test_given_provider_bursting_seconds_of_media_with_its_head_then_it_is_relayed(
    provider: FakeProvider, tmp_path: Path
):
    """Providers send a burst on connect; head and 200+ kB of body can arrive in one read."""
    provider.set(1, fp.ok(prebuffer=4.0))
    assert provider.byte_rate * 4.0 > 128 * 1024
    cfg = config_for(tmp_path, provider, {"solo": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/solo")
        assert c.status == 200
        await c.wait_bytes(128 * 1024, timeout=3)
        await c.close()
