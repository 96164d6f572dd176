"""Bad client input gets a clear error and a close, and never disturbs a stream running alongside."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fake_provider import FakeProvider
from tests.harness import config_for, open_stream, request, running_relay, whole_packets

BAD = [
    (b"GARBAGE\r\n\r\n", b" 400 "),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n", b" 400 "),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", b" 431 "),
    (b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n", b" 431 "),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b" 414 "),
    (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", b" 404 "),
    (b"GET /stream/unknown.channel HTTP/1.1\r\nHost: x\r\n\r\n", b" 404 "),
    (b"GET /stream/..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\n\r\n", b" 404 "),
    (b"DELETE /stream/ch1 HTTP/1.1\r\nHost: x\r\n\r\n", b" 405 "),
    (b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", b" 405 "),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", b" 400 "),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", b" 400 "),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)), b" 400 "),  # a TLS ClientHello
]


@pytest.mark.parametrize(("raw", "expected"), BAD, ids=[f"bad{i}" for i in range(len(BAD))])
async def test_given_bad_request_then_clear_error_and_close_and_stream_alongside_unharmed(
    provider: FakeProvider, tmp_path: Path, raw: bytes, expected: bytes
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1), ("b", 2)]})
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch1")
        await c.wait_bytes(10_000)
        out = await request(relay.port, raw, timeout=3)
        assert out.split(b"\r\n", 1)[0].startswith(b"HTTP/1.1") and expected in out.split(b"\r\n", 1)[0], out[
            :200
        ]
        assert b"Traceback" not in out and provider.password.encode() not in out
        n = len(c.body)
        await c.wait_bytes(n + 20_000)
        assert whole_packets(c.body) and not c.closed
        assert (await request(relay.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))[
            :12
        ] == (b"HTTP/1.1 200")
        await c.close()


async def test_given_keep_alive_client_then_pipelined_requests_are_answered_in_order(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        raw = (
            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3
            + b"GET /lineup.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        out = await request(relay.port, raw)
        assert out.count(b"HTTP/1.1 200 OK") == 4
        assert out.rstrip().endswith(b"]")


async def test_given_slowloris_client_then_connection_closed_after_header_timeout(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    cfg["server"]["header_timeout_s"] = 0.5
    async with running_relay(cfg, tmp_path) as relay:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        t0 = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert 0.4 < asyncio.get_running_loop().time() - t0 < 2.0
        writer.close()


async def test_head_on_stream_answers_headers_without_body_or_upstream(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch1": [("a", 1)]})
    async with running_relay(cfg, tmp_path) as relay:
        out = await request(relay.port, b"HEAD /stream/ch1 HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = out.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"video/mp2t" in head and body == b""
        assert provider.connections[1] == 0
