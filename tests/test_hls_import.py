"""Any source plays: an M3U with a plain TS URL on another port, an HLS URL, Xtream URLs on the
account's server and on another one; each plays from its own URL (seen at each server), every entry
left out is counted under its reason (`relay sync`, `relay channels --skipped`), and no URL or
credential reaches the database, an event, a log line, /status or the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from relay.sources.m3u import M3uEntry, classify, parse_m3u
from relay.sources.streams import fill, template, url_stream_id
from relay.storage.store import Store
from tests.fake_hls import FakeHls, Media, make_hls
from tests.fake_provider import FakeProvider, probe_duration
from tests.harness import config_for, open_stream, request, running_relay
from tests.media import require_ffmpeg

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def hls_media() -> Media:
    require_ffmpeg()
    return make_hls()


class PlainTs:
    """A plain TS server (no Xtream paths): any GET streams the file, looped, paced; paths recorded."""

    def __init__(self, ts: Path) -> None:
        self.data = ts.read_bytes()
        self.rate = len(self.data) / probe_duration(ts)
        self.paths: list[str] = []
        self.port = 0
        self._server: asyncio.base_events.Server | None = None

    async def __aenter__(self) -> PlainTs:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            head = await reader.readuntil(b"\r\n\r\n")
            self.paths.append(head.split()[1].decode())
            # not video/mp2t: the first bytes, not the type or the extension, make it TS
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )
            step = int(self.rate * 0.1) // 188 * 188
            off = 0
            while True:
                chunk = self.data[off : off + step] or self.data[:step]
                off = (off + step) if off + step < len(self.data) else 0
                writer.write(chunk)
                await writer.drain()
                await asyncio.sleep(0.1)
        writer.close()


def test_urls_are_stored_as_templates_and_filled_back(ts_file: Path):
    tmpl = template("http://h:8080/live/alice/s3cret/5.ts?token=abc&u=alice", "alice", "s3cret")
    assert tmpl == "http://h:8080/live/{username}/{password}/5.ts?token=abc&u={username}"
    from relay.config import AccountConfig

    acc = AccountConfig(name="a", url="http://h", username="alice", password="s3cret")
    assert fill(tmpl, acc) == "http://h:8080/live/alice/s3cret/5.ts?token=abc&u=alice"
    assert template("http://bob:pw@h/x.ts", None, None) == "http://h/x.ts"
    assert url_stream_id(tmpl) == url_stream_id(tmpl) > 2**40
    e = next(parse_m3u(["#EXTINF:-1,A", "udp://239.0.0.1:1234"]))
    assert classify(e, acc) == "unsupported_scheme"
    assert "s3cret" not in repr(M3uEntry("A", url="http://h/alice/s3cret/1"))


async def test_an_m3u_of_every_kind_plays_each_from_its_own_url_and_reports_every_skip(
    provider: FakeProvider, ts_file: Path, tmp_path: Path, hls_media: Media, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO)
    async with (
        FakeHls(hls_media) as hls,
        PlainTs(ts_file) as plain,
        FakeProvider(ts_file) as other,  # an Xtream-style URL on another server
    ):
        own = provider.url
        m3u = tmp_path / "list.m3u"
        m3u.write_text(
            "#EXTM3U\n"
            '#EXTINF:-1 tvg-id="own.tv" group-title="News",Own Xtream\n'
            f"{own}/live/alice/s3cret/5.ts\n"
            '#EXTINF:-1 group-title="News",HLS News\n'
            f"{hls.url}\n"
            "#EXTINF:-1,Plain CNN\n"
            f"http://127.0.0.1:{plain.port}/streams/cnn.ts\n"
            "#EXTINF:-1,Elsewhere\n"
            f"{other.url}/live/alice/s3cret/9.ts\n"
            "#EXTINF:-1,A Movie\n"
            f"{own}/movie/alice/s3cret/100.mkv\n"
            "#EXTINF:-1,A Series\n"
            f"{own}/series/alice/s3cret/200.mp4\n"
            "#EXTINF:-1,RTMP feed\n"
            "rtmp://127.0.0.1/live/feed\n"
            "#EXTINF:-1,HLS News again\n"
            f"{hls.url}\n"
            "#EXTINF:-1,Broken\n"
            "not a url at all\n"
        )
        cfg = config_for(tmp_path, provider, {}, accounts=("x",))
        cfg["accounts"][0]["m3u"] = str(m3u)
        cfg["accounts"][0]["max_connections"] = 4
        cfg["channels"] = [{"id": f"c{i}", "name": f"C{i}", "number": str(10 + i)} for i in range(4)]
        config = tmp_path / "config.yaml"
        config.write_bytes(orjson.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "relay", *args, "--config", str(config)],
                capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
            )  # fmt: skip

        sync = await asyncio.to_thread(cli, "sync")
        assert sync.returncode == 0, sync.stderr
        assert (
            "skipped: x: 5 entries (1 duplicate, 1 unparseable, 1 unsupported_scheme, 2 vod_series)"
            in sync.stdout
        )
        listed = await asyncio.to_thread(cli, "channels", "--skipped")
        assert listed.returncode == 0
        assert "Entries not imported: 5" in listed.stdout
        for name, reason in [
            ("A Movie", "vod_series"),
            ("A Series", "vod_series"),
            ("RTMP feed", "unsupported_scheme"),
            ("HLS News again", "duplicate"),
            ("Broken", "unparseable"),
        ]:
            assert any(name in ln and reason in ln and "m3u" in ln for ln in listed.stdout.splitlines())

        store = Store(tmp_path / "relay.db")
        by_name = {s.name: s for s in store.streams()}
        assert set(by_name) >= {"Own Xtream", "HLS News", "Plain CNN", "Elsewhere"}
        stored = store.stream_directory().urls
        assert ("x", 5) not in stored  # the account's own server: played as its Xtream stream
        assert stored[("x", 9)] == f"{other.url}/live/{{username}}/{{password}}/9.ts"
        for i, name in enumerate(["Own Xtream", "HLS News", "Plain CNN", "Elsewhere"]):
            store.map_manual(f"c{i}", "x", by_name[name].stream_id, 0)
        db_dump = "\n".join(store.conn.iterdump())
        store.close()
        assert "s3cret" not in db_dump

        async with running_relay(cfg, tmp_path) as relay:
            for i in range(4):
                c = await open_stream(relay.port, f"/stream/c{i}")
                assert c.status == 200
                await c.wait_bytes(100_000, timeout=15)
                if i == 0:
                    status = await request(relay.port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", timeout=1)
                    assert b"x/5" in status and b"127.0.0.1:" not in status.split(b"\r\n\r\n", 1)[1]
                await c.close()
            await relay.events.flush()
        assert [p for p, _ in provider.requests if "/live/" in p] == ["/live/alice/s3cret/5.ts"]
        assert hls.paths("/index.m3u8") and hls.paths("/seg")
        assert plain.paths == ["/streams/cnn.ts"]
        assert [p for p, _ in other.requests] == ["/live/alice/s3cret/9.ts"]
        events = (tmp_path / "events.jsonl").read_text()
        stream_servers = [f":{p}" for p in (hls.port, plain.port, other.port)]
        for text in (events, sync.stdout, sync.stderr, listed.stdout, listed.stderr, caplog.text):
            assert "s3cret" not in text
            assert not any(s in text for s in stream_servers)  # no stream URL, even redacted
        assert "http://" not in events and "http://" not in listed.stdout
