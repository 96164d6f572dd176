"""Upstream-side input: whatever a provider sends, it is a classified failure, then a healthy backup.

Each hostile upstream is tried twice: as the only stream of a channel (the client gets a clean 503 and
the `exhausted` event names the reason), and as the primary of a channel with a healthy backup (the
client gets the backup's packets at once, the primary's bytes never reach it, and the upgrade probe
back to the primary fails with the same reason). Nothing hangs, crashes or leaks a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider, RawProvider, TlsFakeProvider
from tests.harness import config_for, open_stream, recorder, running_relay, until, whole_packets

HTML = b"<html><head><title>Error</title></head><body><h1>Line expired</h1></body></html>\n"

# (url of the hostile upstream, number of its connections still open)
Upstream = tuple[str, Callable[[], int]]
Opener = Callable[[FakeProvider, Path, Path], AbstractAsyncContextManager[Upstream]]


@dataclass(frozen=True)
class Case:
    name: str
    opener: Opener
    reason: str
    http_status: int | None = None


def raw(make: Callable[[bytes], fp.Responder]) -> Opener:
    """An upstream that answers with raw bytes from a RawProvider."""

    @asynccontextmanager
    async def opener(provider: FakeProvider, ts_file: Path, tmp: Path) -> AsyncIterator[Upstream]:
        async with RawProvider(make(ts_file.read_bytes())) as r:
            yield r.url, lambda: r.live

    return opener


def behaviour(b: fp.Behaviour) -> Opener:
    """Stream id 1 of the shared FakeProvider, with behaviour `b`."""

    @asynccontextmanager
    async def opener(provider: FakeProvider, ts_file: Path, tmp: Path) -> AsyncIterator[Upstream]:
        provider.set(1, b)
        yield provider.url, lambda: provider.active(1)

    return opener


@asynccontextmanager
async def https_to_plain_server(provider: FakeProvider, ts_file: Path, tmp: Path) -> AsyncIterator[Upstream]:
    """An https:// URL whose server speaks plain HTTP: the TLS handshake never completes."""
    yield f"https://127.0.0.1:{provider.port}", lambda: provider.active_total() - provider.active(2)


@asynccontextmanager
async def http_to_tls_server(provider: FakeProvider, ts_file: Path, tmp: Path) -> AsyncIterator[Upstream]:
    """An http:// URL whose server speaks TLS: it hangs up on the plain request."""
    cert, key = fp.self_signed_cert(tmp)
    async with TlsFakeProvider(ts_file, certfile=cert, keyfile=key) as tls:
        yield f"http://127.0.0.1:{tls.port}", tls.active_total


@asynccontextmanager
async def self_signed_tls(provider: FakeProvider, ts_file: Path, tmp: Path) -> AsyncIterator[Upstream]:
    """https:// with a self-signed certificate and the default tls_verify: the check fails."""
    cert, key = fp.self_signed_cert(tmp)
    async with TlsFakeProvider(ts_file, certfile=cert, keyfile=key) as tls:
        yield tls.url, tls.active_total


CASES = [
    Case("non-TS bytes with 200", raw(lambda ts: fp.noise_200()), "StreamError"),
    Case("HTML page with 200 and a length", behaviour(fp.garbage_200()), "StreamError"),
    Case("HTML page with 200, left open", raw(lambda ts: fp.raw_200(HTML)), "StreamStall"),
    Case("endless headers", raw(lambda ts: fp.endless_headers()), "HttpError"),
    Case("garbled status line", raw(lambda ts: fp.raw_bytes(b"HTTP/1.1 2OO OK\r\n\r\n")), "HttpError"),
    Case("200 and then silence", raw(lambda ts: fp.raw_200(b"", b"")), "StreamStall"),
    Case("redirect loop", behaviour(fp.redirect(loop=True)), "HttpError", 302),
    Case("redirect to ftp://", behaviour(fp.redirect("ftp://127.0.0.1/live/x.ts")), "HttpError", 302),
    Case("chunked, bad first size line", raw(lambda ts: fp.chunked_bad_framing(ts, 0)), "StreamError"),
    Case("gzip'd body", raw(fp.gzip_stream), "StreamError"),
    Case("https:// to a plain HTTP server", https_to_plain_server, "ConnectionTimeout"),
    Case("http:// to a TLS server", http_to_tls_server, "ConnectionError"),
    Case("https:// with a self-signed certificate", self_signed_tls, "ConnectionError"),
]


def fast_failover(cfg: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Short timeouts, a guide from a file and no account sync: only stream requests reach the hostile
    upstream (a sync's player_api call to a server that never answers would hold a connection)."""
    cfg["failover"].update(connect_timeout_s=0.5, stall_timeout_s=1.0, upgrade_after_s=0.3)
    cfg["sync"] = {"on_start": False}
    (tmp / "guide.xml").write_text("<tv></tv>\n")
    cfg["guide"] = {"sources": [{"file": str(tmp / "guide.xml")}]}
    return cfg


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_given_hostile_upstream_then_classified_failure_and_failover_to_healthy_backup(
    provider: FakeProvider, ts_file: Path, tmp_path: Path, case: Case
):
    async with asyncio.timeout(20), case.opener(provider, ts_file, tmp_path) as (url, hostile_live):
        chans = {"solo": [("a", 1)], "ch": [("b", 1), ("c", 2)]}
        cfg = fast_failover(config_for(tmp_path, provider, chans, urls={"a": url, "b": url}), tmp_path)
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)

            # Given the hostile upstream is a channel's only stream, then a clean 503 and no hang
            solo = await open_stream(relay.port, "/stream/solo")
            assert solo.status == 503
            await solo.close()
            ex = next(e for e in events if e["event"] == "exhausted")
            assert (ex["reason"], ex["http_status"]) == (case.reason, case.http_status), ex

            # Given it is the primary and a healthy backup exists, then the backup is relayed
            c = await open_stream(relay.port, "/stream/ch")
            assert c.status == 200
            await until(lambda: any(e["event"] == "upgrade_failed" for e in events), what="upgrade probe")
            await c.wait_bytes(len(c.body) + 20_000)
            body = bytes(c.body)
            assert whole_packets(body) and b"<html" not in body and b"\x1f\x8b" not in body[:2]
            start = next(e for e in events if e["event"] == "session_start" and e["channel"] == "ch")
            assert start["to_stream"] == "c/2" and start["attempted"][0] == "b/1"
            probe = next(e for e in events if e["event"] == "upgrade_failed")
            assert (probe["reason"], probe["http_status"]) == (case.reason, case.http_status), probe
            assert not c.closed
            await c.close()
            await until(lambda: not relay.sessions, what="session end")
            await until(lambda: hostile_live() == 0, what="hostile connections closed")
            assert sum(relay.shared.slots.held.values()) == 0


BAD_FRAMING = [
    (b"zz\r\n", "a size that is not hex"),
    (b"-1\r\n", "a negative size"),
    (b"\r\n", "an empty size line"),
    (b"10\r\n" + b"x" * 16 + b"XX", "chunk data not ended by CRLF"),
    (b"ffffffffffffffffffffff\r\n", "a size that overflows 64 bits"),
]


@pytest.mark.parametrize(("bad", "what"), BAD_FRAMING, ids=[w for _, w in BAD_FRAMING])
async def test_given_chunked_primary_when_framing_breaks_midstream_then_stream_error_and_failover(
    provider: FakeProvider, ts_file: Path, tmp_path: Path, bad: bytes, what: str
):
    responder = fp.chunked_bad_framing(ts_file.read_bytes(), good_chunks=4, bad=bad)
    async with asyncio.timeout(15), RawProvider(responder) as hostile:
        chans = {"ch": [("b", 1), ("c", 2)]}
        cfg = fast_failover(config_for(tmp_path, provider, chans, urls={"b": hostile.url}), tmp_path)
        cfg["failover"]["upgrade_after_s"] = 60
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            c = await open_stream(relay.port, "/stream/ch")
            assert c.status == 200
            await until(lambda: any(e["event"] == "failover" for e in events), what="failover")
            await c.wait_bytes(len(c.body) + 20_000)
            fo = next(e for e in events if e["event"] == "failover")
            assert (fo["from_stream"], fo["to_stream"], fo["reason"]) == ("b/1", "c/2", "StreamError"), fo
            assert whole_packets(c.body) and not c.closed
            await c.close()
            await until(lambda: hostile.live == 0, what="hostile connection closed")


@pytest.mark.parametrize("setting", ["ca_file", "tls_verify_off"])
async def test_given_https_provider_with_own_certificate_when_trusted_then_streams_and_fails_over(
    ts_file: Path, tmp_path: Path, setting: str
):
    cert, key = fp.self_signed_cert(tmp_path)
    async with (
        asyncio.timeout(15),
        TlsFakeProvider(ts_file, certfile=cert, keyfile=key) as tls,
    ):
        cfg = config_for(tmp_path, tls, {"ch": [("a", 1), ("b", 2)]})
        for acc in cfg["accounts"]:
            if setting == "ca_file":
                acc["ca_file"] = cert.name  # relative to the config file's folder
            else:
                acc["tls_verify"] = False
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            c = await open_stream(relay.port, "/stream/ch")
            assert c.status == 200
            await c.wait_bytes(20_000)
            await tls.drop(1)
            await until(lambda: tls.active(2) == 1, what="backup over TLS")
            await c.wait_bytes(len(c.body) + 20_000)
            fo = next(e for e in events if e["event"] == "failover")
            assert (fo["from_stream"], fo["to_stream"], fo["reason"]) == ("a/1", "b/2", "StreamError")
            assert whole_packets(c.body)
            await c.close()
