"""Tests of the test tools themselves: the ffmpeg media cache and the fake Xtream provider.

The relay's failover tests trust these to misbehave exactly as asked, so each behaviour is checked with a
raw asyncio client that sees the bytes on the wire (no HTTP library smoothing things over).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import media
from tests.fake_provider import (
    Blackhole,
    FakeProvider,
    Ok,
    Redirect,
    Refuse,
    closed_port,
    drop_after,
    garbage_200,
    redirect,
    stall_after,
    status,
)

TS = 188

# ---------------------------------------------------------------------------------------------------------
# A deliberately dumb HTTP/1.1 client


@dataclass
class Resp:
    status: int
    headers: dict[str, str]  # lowercase names
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@contextlib.asynccontextmanager
async def get(target: str, port: int, *, headers: dict[str, str] | None = None) -> AsyncIterator[Resp]:
    """GET ``target`` (a path) from 127.0.0.1:port; yields after the response head has arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)).decode("latin-1")
        status_line, *rest = head.strip("\r\n").split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in rest)}
        yield Resp(int(status_line.split()[1]), hdrs, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def live_path(p: FakeProvider, sid: int, *, password: str | None = None) -> str:
    return p.stream_url(sid, password=password).removeprefix(p.url)


async def read_until_eof(reader: asyncio.StreamReader, timeout: float = 2.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


async def read_for(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Whatever arrives within ``seconds`` (stops early at EOF)."""
    buf = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            data = await asyncio.wait_for(reader.read(65536), left)
        except TimeoutError:
            break
        if not data:
            break
        buf += data
    return bytes(buf)


async def drain_quiet(reader: asyncio.StreamReader, gap: float = 0.15) -> None:
    """Consume in-flight bytes until the line has been silent for ``gap`` seconds."""
    while await read_for(reader, gap):
        pass


def assert_ts_aligned(data: bytes) -> None:
    assert len(data) >= TS
    assert all(data[i] == 0x47 for i in range(0, len(data) - len(data) % TS, TS))


def dechunk(raw: bytes) -> tuple[bytes, bool]:
    """Decode chunked framing; returns (payload, saw_terminating_chunk)."""
    out, pos = bytearray(), 0
    while True:
        eol = raw.find(b"\r\n", pos)
        if eol < 0:
            return bytes(out), False
        size = int(raw[pos:eol], 16)
        if size == 0:
            return bytes(out), True
        start = eol + 2
        if len(raw) < start + size + 2:
            return bytes(out + raw[start : start + size]), False
        assert raw[start + size : start + size + 2] == b"\r\n"
        out += raw[start : start + size]
        pos = start + size + 2


# ---------------------------------------------------------------------------------------------------------
# media.py


def _pids(data: bytes) -> set[int]:
    return {((data[i + 1] & 0x1F) << 8) | data[i + 2] for i in range(0, len(data), TS)}


def _pat_program(data: bytes) -> tuple[int, int, int]:
    """(program_number, pmt_pid, PAT packet count) from the first PAT."""
    pats = [data[i : i + TS] for i in range(0, len(data), TS) if data[i + 1] & 0x1F == 0 and data[i + 2] == 0]
    payload = pats[0][4:]
    sec = payload[1 + payload[0] :]
    return (sec[8] << 8) | sec[9], ((sec[10] & 0x1F) << 8) | sec[11], len(pats)


def test_media_h264_has_default_pids(ts_file: Path) -> None:
    data = ts_file.read_bytes()
    assert len(data) % TS == 0
    assert_ts_aligned(data)
    assert _pids(data) == {0x0, 0x11, 0x100, 0x101, 0x1000}
    program, pmt, pats = _pat_program(data)
    assert (program, pmt) == (1, 0x1000)
    assert pats >= 4 * 4  # PAT/PMT at least 4 times a second, so joins sync fast


def test_media_mpeg2_differs(ts_file_mpeg2: Path) -> None:
    data = ts_file_mpeg2.read_bytes()
    assert _pids(data) == {0x0, 0x11, 0x1E0, 0x1E1, 0x1E2}
    assert _pat_program(data)[:2] == (7, 0x1E0)


def test_media_cache_is_keyed(ts_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    short = media.make_ts(1)
    assert short != ts_file and short.stat().st_size < ts_file.stat().st_size
    assert media.make_ts(variant="mpeg2") != ts_file

    def no_ffmpeg(*_args: object, **_kw: object) -> None:
        raise AssertionError("cached media was regenerated")

    monkeypatch.setattr(media.subprocess, "run", no_ffmpeg)
    assert media.make_ts() == ts_file
    assert media.make_ts(1) == short


def test_require_ffmpeg_skips_locally_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        media.require_ffmpeg()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        media.require_ffmpeg()


# ---------------------------------------------------------------------------------------------------------
# ok


async def test_ok_streams_aligned_ts_at_real_time(provider: FakeProvider) -> None:
    async with get(live_path(provider, 1234), provider.port) as r:
        assert r.status == 200
        assert r.headers["content-type"] == "video/mp2t"
        assert "content-length" not in r.headers and "transfer-encoding" not in r.headers
        data = await read_for(r.reader, 0.5)
    assert_ts_aligned(data)
    assert data[: 10 * TS] == provider.ts_path.read_bytes()[: 10 * TS]
    assert 0.5 * 0.5 * provider.byte_rate < len(data) < 1.5 * 0.5 * provider.byte_rate
    assert provider.connections[1234] == 1


async def test_rate_factor_and_prebuffer(provider: FakeProvider) -> None:
    provider.set(1, Ok(rate_factor=4.0))
    provider.set(2, Ok(prebuffer=1.0))
    async with (
        get(live_path(provider, 1), provider.port) as fast,
        get(live_path(provider, 2), provider.port) as b,
    ):
        fast_data = await read_for(fast.reader, 0.3)
        burst = await read_for(b.reader, 0.05)
    assert 4 * 0.3 * 0.5 * provider.byte_rate < len(fast_data) < 4 * 0.3 * 1.5 * provider.byte_rate
    assert len(burst) >= 0.9 * provider.byte_rate


async def test_offset_and_query_string_and_short_form(provider: FakeProvider) -> None:
    provider.set(9, Ok(offset=10 * TS + 5, rate_factor=4.0))
    async with get(live_path(provider, 9) + "?token=abc&x=1", provider.port) as r:
        assert r.status == 200
        data = await r.reader.readexactly(TS)
    assert data == provider.ts_path.read_bytes()[10 * TS : 11 * TS]
    async with get("/alice/s3cret/9", provider.port) as r:
        assert r.status == 200
    assert provider.connections[9] == 2


async def test_loop_false_chunked_ends_with_terminator(provider: FakeProvider) -> None:
    provider.set(3, Ok(chunked=True, loop=False, rate_factor=50.0))
    async with get(live_path(provider, 3), provider.port) as r:
        assert r.headers["transfer-encoding"] == "chunked"
        raw = await read_until_eof(r.reader)
    payload, terminated = dechunk(raw)
    assert terminated
    assert payload == provider.ts_path.read_bytes()


# ---------------------------------------------------------------------------------------------------------
# failures


@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("bob", "s3cret")])
async def test_wrong_credentials_401(provider: FakeProvider, user: str, password: str) -> None:
    async with get(f"/live/{user}/{password}/77.ts", provider.port) as r:
        assert r.status == 401
        assert await read_until_eof(r.reader) == b"401 Unauthorized\n"
    assert provider.connections[77] == 1


async def test_unknown_paths_404(provider: FakeProvider) -> None:
    for target in ("/", "/live/alice/s3cret/5.m3u8", "/player_api.php?username=alice"):
        async with get(target, provider.port) as r:
            assert r.status == 404


@pytest.mark.parametrize("code", [401, 403, 404, 500, 503, 884])
async def test_status_codes(provider: FakeProvider, code: int) -> None:
    provider.set(5, status(code))
    async with get(live_path(provider, 5), provider.port) as r:
        assert r.status == code
        body = await read_until_eof(r.reader)
    assert int(r.headers["content-length"]) == len(body) > 0


async def test_garbage_200(provider: FakeProvider) -> None:
    provider.set(5, garbage_200())
    async with get(live_path(provider, 5), provider.port) as r:
        assert r.status == 200 and r.headers["content-type"] == "text/html"
        assert b"<html>" in await read_until_eof(r.reader)


async def test_refuse_resets_without_response(provider: FakeProvider) -> None:
    provider.set(6, Refuse())
    reader, writer = await asyncio.open_connection("127.0.0.1", provider.port)
    writer.write(f"GET {live_path(provider, 6)} HTTP/1.1\r\n\r\n".encode())
    with pytest.raises(ConnectionResetError):
        await read_until_eof(reader)
    writer.close()
    provider.set(6, Refuse(rst=False))
    reader, writer = await asyncio.open_connection("127.0.0.1", provider.port)
    writer.write(f"GET {live_path(provider, 6)} HTTP/1.1\r\n\r\n".encode())
    assert await read_until_eof(reader) == b""
    writer.close()
    assert provider.connections[6] == 2 and provider.active_total() == 0


async def test_closed_port_refuses() -> None:
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", closed_port())


async def test_blackhole_never_answers(provider: FakeProvider) -> None:
    provider.set(7, Blackhole())
    reader, writer = await asyncio.open_connection("127.0.0.1", provider.port)
    writer.write(f"GET {live_path(provider, 7)} HTTP/1.1\r\n\r\n".encode())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.5)
    assert provider.active(7) == 1
    writer.close()  # the client giving up must free the server side too
    await asyncio.sleep(0.05)
    assert provider.active(7) == 0
    assert provider.conns_for(7)[0].killed == "peer"


async def test_drop_after_closes_after_n_bytes(provider: FakeProvider) -> None:
    provider.set(8, drop_after(10_000, rate_factor=20.0))
    async with get(live_path(provider, 8), provider.port) as r:
        assert r.status == 200
        assert len(await read_until_eof(r.reader)) == 10_000
    assert provider.bytes_sent(8) == 10_000


async def test_stall_after_stops_but_stays_open(provider: FakeProvider) -> None:
    provider.set(8, stall_after(5_000, rate_factor=20.0))
    async with get(live_path(provider, 8), provider.port) as r:
        assert len(await read_for(r.reader, 0.3)) == 5_000
        assert provider.active(8) == 1 and provider.live(8)[0].stalled
        provider.resume(8)
        assert len(await read_for(r.reader, 0.1)) > 0


async def test_redirect_via_load_balancer(provider: FakeProvider) -> None:
    provider.set(10, redirect(times=2))
    async with get(live_path(provider, 10), provider.port) as r:
        assert r.status == 302
        hop1 = r.headers["location"]
    assert hop1.startswith(f"{provider.url}/lb/") and hop1.endswith("/10.ts")
    async with get(hop1.removeprefix(provider.url), provider.port) as r:
        assert r.status == 302
        hop2 = r.headers["location"]
    assert hop2.startswith(f"{provider.url}/lb/") and hop2 != hop1
    async with get(hop2.removeprefix(provider.url), provider.port) as r:
        assert r.status == 200 and r.headers["content-type"] == "video/mp2t"
        assert_ts_aligned(await r.reader.readexactly(4 * TS))
    async with get("/lb/bogus/10.ts", provider.port) as r:
        assert r.status == 403
    assert provider.connections[10] == 4


async def test_redirect_loop_literal_location_and_expiry(provider: FakeProvider) -> None:
    provider.set(11, redirect(loop=True))
    async with get(live_path(provider, 11), provider.port) as r:
        hop = r.headers["location"]
    async with get(hop.removeprefix(provider.url), provider.port) as r:
        assert r.status == 302 and r.headers["location"] == provider.stream_url(11)

    provider.set(12, redirect("{url}/elsewhere/{stream_id}.ts"))
    async with get(live_path(provider, 12), provider.port) as r:
        assert r.headers["location"] == f"{provider.url}/elsewhere/12.ts"

    provider.set(14, redirect(then=status(458)))
    async with get(live_path(provider, 14), provider.port) as r:
        hop = r.headers["location"]
    async with get(hop.removeprefix(provider.url), provider.port) as r:
        assert r.status == 458

    provider.set(13, Redirect(token_ttl=0.05))
    async with get(live_path(provider, 13), provider.port) as r:
        hop = r.headers["location"]
    await asyncio.sleep(0.1)
    async with get(hop.removeprefix(provider.url), provider.port) as r:
        assert r.status == 403


async def test_recover_applies_to_new_connections_only(provider: FakeProvider) -> None:
    async with get(live_path(provider, 20), provider.port) as live:
        assert live.status == 200
        provider.set(20, status(503))
        async with get(live_path(provider, 20), provider.port) as r:
            assert r.status == 503
        assert len(await read_for(live.reader, 0.1)) > 0  # the established stream is unaffected
        provider.set(20, Ok())
        async with get(live_path(provider, 20), provider.port) as r:
            assert r.status == 200
    assert provider.connections[20] == 3


# ---------------------------------------------------------------------------------------------------------
# live-connection controls and introspection


async def test_drop_live_connections(provider: FakeProvider) -> None:
    async with (
        get(live_path(provider, 1), provider.port) as a,
        get(live_path(provider, 1), provider.port) as b,
        get(live_path(provider, 2), provider.port) as other,
    ):
        await a.reader.readexactly(TS)
        await b.reader.readexactly(TS)
        assert provider.active(1) == 2 and provider.active_total() == 3
        loop = asyncio.get_running_loop()
        before = loop.time()
        t = await provider.drop(1)
        assert before <= t <= loop.time()
        await read_until_eof(a.reader)
        await read_until_eof(b.reader)
        assert provider.active(1) == 0 and provider.active(2) == 1
        assert len(await read_for(other.reader, 0.1)) > 0
    assert {c.killed for c in provider.conns_for(1)} == {"drop"}
    assert all(c.body_bytes > 0 for c in provider.conns_for(1))


async def test_reset_live_connection(provider: FakeProvider) -> None:
    async with get(live_path(provider, 1), provider.port) as r:
        await r.reader.readexactly(TS)
        await provider.reset(1)
        with pytest.raises(ConnectionResetError):
            while await r.reader.read(65536):
                pass


async def test_stall_and_resume_live_connection(provider: FakeProvider) -> None:
    async with get(live_path(provider, 1), provider.port) as r:
        await r.reader.readexactly(TS)
        provider.stall(1)
        await drain_quiet(r.reader)
        sent = provider.bytes_sent(1)
        assert await read_for(r.reader, 0.2) == b""
        assert provider.bytes_sent(1) == sent and provider.active(1) == 1
        provider.resume(1)
        assert len(await read_for(r.reader, 0.1)) > 0


async def test_request_log_has_user_agent(provider: FakeProvider) -> None:
    async with get(live_path(provider, 1), provider.port, headers={"User-Agent": "VLC/3.0.20 LibVLC/3.0.20"}):
        pass
    path, headers = provider.requests[-1]
    assert path == "/live/alice/s3cret/1.ts"
    assert headers["User-Agent"] == headers["user-agent"] == "VLC/3.0.20 LibVLC/3.0.20"
    assert "USER-AGENT" in headers


async def test_max_connections_evicts_oldest(ts_file: Path) -> None:
    async with FakeProvider(ts_file, max_connections=1) as p, get(live_path(p, 1), p.port) as first:
        await first.reader.readexactly(TS)
        async with get(live_path(p, 2), p.port) as second:
            assert second.status == 200
            await read_until_eof(first.reader)
            assert p.conns_for(1)[0].killed == "evict" and p.active(2) == 1
            assert p.peak_streaming == 2 and p.evictions == 1  # what an over-limit client is caught by


async def test_max_connections_can_refuse_the_newest_instead(ts_file: Path) -> None:
    async with (
        FakeProvider(ts_file, max_connections=1, on_limit="refuse") as p,
        get(live_path(p, 1), p.port) as first,
    ):
        await first.reader.readexactly(TS)
        async with get(live_path(p, 2), p.port) as second:
            assert second.status == 403
        await first.reader.readexactly(TS)  # the first one keeps streaming
        assert p.evictions == 0 and p.over_limit_refused == 1 and p.active(1) == 1


async def test_close_leaves_nothing_behind(ts_file: Path) -> None:
    p = FakeProvider(ts_file)
    await p.start()
    p.set(2, Blackhole())
    async with get(live_path(p, 1), p.port) as streaming:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(f"GET {live_path(p, 2)} HTTP/1.1\r\n\r\n".encode())
        await asyncio.sleep(0.05)
        assert p.active_total() == 2
        await p.close()
        await p.close()  # idempotent
        assert p.active_total() == 0 and all(not c.open for c in p.conns)
        await read_until_eof(streaming.reader)
        assert await read_until_eof(reader) == b""
        writer.close()
    assert asyncio.all_tasks() == {asyncio.current_task()}
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", p.port)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_works_under_both_loops(ts_file: Path, loop_kind: str) -> None:
    """conftest may pin one loop for the async tests, so cover both here explicitly."""
    if loop_kind == "uvloop":
        loop_factory = pytest.importorskip("uvloop").new_event_loop
    else:
        loop_factory = asyncio.new_event_loop

    async def scenario() -> None:
        async with FakeProvider(ts_file, rate_factor=4.0) as p:
            async with get(live_path(p, 1), p.port) as r:
                assert_ts_aligned(await r.reader.readexactly(8 * TS))
                await p.drop(1)
                await read_until_eof(r.reader)
            async with get(live_path(p, 1), p.port) as r:
                await r.reader.readexactly(TS)
                await p.reset(1)
                with pytest.raises(ConnectionResetError):
                    while await r.reader.read(65536):
                        pass
            p.set(3, drop_after(3000, chunked=True))
            async with get(live_path(p, 3), p.port) as r:
                payload, terminated = dechunk(await read_until_eof(r.reader))
                assert len(payload) == 3000 and not terminated
        assert asyncio.all_tasks() == {asyncio.current_task()}

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        assert (type(runner.get_loop()).__module__.split(".")[0] == "uvloop") == (loop_kind == "uvloop")
        runner.run(scenario())
