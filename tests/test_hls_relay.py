"""HLS upstreams in the relay: each HLS failure fails over to a TS backup and back, with the right
reason and events; keep-alive reuse; variants; AES-128; a discontinuity spliced like a switch."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fake_hls import FakeHls, Media, make_hls
from tests.fake_provider import FakeProvider
from tests.ffmpeg_client import FfmpegDecoder
from tests.harness import config_for, open_stream, recorder, running_relay, until, whole_packets
from tests.media import require_ffmpeg


@pytest.fixture(scope="session")
def hls_media() -> Media:
    require_ffmpeg()
    return make_hls()


@pytest.fixture(scope="session")
def hls_restarted() -> Media:
    require_ffmpeg()
    return make_hls(offset=500)


def hls_config(tmp: Path, provider: FakeProvider, urls: list[str], **failover: Any) -> dict[str, Any]:
    """Channel ch1: the HLS URL(s) first (no account), then a.ts stream 2 on account b as the backup."""
    cfg = config_for(tmp, provider, {"ch1": [("b", 2)]}, **failover)
    streams = [{"url": u, "priority": i} for i, u in enumerate(urls)]
    streams.append({"account": "b", "stream_id": 2, "priority": len(urls)})
    cfg["channels"][0]["streams"] = streams
    return cfg


def named(events: list[dict], name: str) -> list[dict]:
    return [e for e in events if e["event"] == name]


async def test_hls_channel_plays_over_reused_keep_alive_connections(
    provider: FakeProvider, tmp_path: Path, hls_media: Media
):
    async with (
        FakeHls(hls_media) as hls,
        running_relay(hls_config(tmp_path, provider, [hls.url]), tmp_path) as relay,
    ):
        events = recorder(relay)
        c = await open_stream(relay.port, "/stream/ch1")
        assert c.status == 200
        await c.wait_bytes(400_000, timeout=15)
        assert whole_packets(c.body)
        segs = hls.paths("/seg")
        reloads = hls.paths("/index.m3u8")
        assert len(segs) >= 4 and len(reloads) >= 2
        assert hls.connections == 1  # playlist and segments on one connection, reused
        first = int(segs[0].removeprefix("/seg").removesuffix(".ts"))
        assert first == hls.window - 3  # the live edge: three target durations from the end
        nums = [int(p.removeprefix("/seg").removesuffix(".ts")) for p in segs]
        assert nums == list(range(first, first + len(nums)))  # in order, none twice, none skipped
        assert provider.active(2) == 0
        assert named(events, "session_start")[0]["to_stream"].startswith("direct/")
        await c.close()


FAULTS = {
    "freeze": ("StreamStall", None),
    "segment404": ("StreamError", 404),
    "playlist404": ("HttpError", 404),
    "playlist500": ("HttpError", 500),
    "endlist": ("StreamError", None),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_each_hls_failure_fails_over_to_ts_and_back(
    provider: FakeProvider, tmp_path: Path, hls_media: Media, fault: str
):
    reason, status = FAULTS[fault]
    async with FakeHls(hls_media) as hls:
        cfg = hls_config(tmp_path, provider, [hls.url], stall_timeout_s=1.0, upgrade_after_s=2.0)
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            c = await open_stream(relay.port, "/stream/ch1")
            await c.wait_bytes(200_000, timeout=15)
            if fault == "freeze":
                hls.freeze()
            elif fault == "segment404":
                hls.fail_segment()
            elif fault == "playlist404":
                hls.playlist_status(404)
            elif fault == "playlist500":
                hls.playlist_status(500)
            else:
                hls.endlist()
            await until(lambda: named(events, "failover"), timeout=10, what="failover")
            ev = named(events, "failover")[0]
            assert ev["reason"] == reason and ev["http_status"] == status
            assert ev["from_stream"].startswith("direct/") and ev["to_stream"] == "b/2"
            assert ev["switch_ms"] < 2000
            n = len(c.body)
            await c.wait_bytes(n + 100_000, timeout=10)
            assert provider.active(2) == 1
            if fault in ("segment404", "endlist", "freeze"):
                assert named(events, "hls_error")[0]["reason"] == reason
            hls.heal()
            await until(lambda: named(events, "upgrade"), timeout=15, what="upgrade back to HLS")
            up = named(events, "upgrade")[0]
            assert up["to_stream"] == ev["from_stream"]
            n = len(c.body)
            await c.wait_bytes(n + 100_000, timeout=10)
            await until(lambda: provider.active(2) == 0, what="TS backup closed")
            assert whole_packets(c.body)
            for e in events:
                assert "http://" not in str(e)  # no URL in any event
            await c.close()


async def test_master_playlist_variant_choice_and_fallback(
    provider: FakeProvider, tmp_path: Path, hls_media: Media
):
    async with FakeHls(hls_media, variants=(800_000, 5_000_000, 2_000_000)) as hls:
        hls.playlist_status(404, variant=2)  # the one the cap picks is broken: the next best is tried
        cfg = hls_config(tmp_path, provider, [hls.url], hls_max_bandwidth=3_000_000)
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            c = await open_stream(relay.port, "/stream/ch1")
            await c.wait_bytes(200_000, timeout=15)
            assert hls.paths("/v2/index.m3u8") and hls.paths("/v0/seg")
            assert not hls.paths("/v1/")  # over the cap, and another variant works
            assert not named(events, "failover") and provider.active(2) == 0
            await c.close()


async def test_aes128_segments_are_decrypted(provider: FakeProvider, tmp_path: Path, hls_media: Media):
    async with FakeHls(hls_media, encrypt=True) as hls:
        cfg = hls_config(tmp_path, provider, [hls.url])
        async with running_relay(cfg, tmp_path) as relay:
            c = await open_stream(relay.port, "/stream/ch1")
            await c.wait_bytes(300_000, timeout=15)
            assert whole_packets(c.body)  # ciphertext would not be
            assert hls.paths("/key.bin") == ["/key.bin"]  # fetched once, kept
            assert provider.active(2) == 0
            await c.close()


async def test_a_playlist_served_as_text_plain_is_still_hls(
    provider: FakeProvider, tmp_path: Path, hls_media: Media
):
    async with FakeHls(hls_media, playlist_content_type="text/plain") as hls:
        cfg = hls_config(tmp_path, provider, [hls.url])
        async with running_relay(cfg, tmp_path) as relay:
            c = await open_stream(relay.port, "/stream/ch1")
            await c.wait_bytes(200_000, timeout=15)
            assert hls.paths("/seg") and provider.active(2) == 0
            await c.close()


async def test_segments_that_left_the_window_are_counted_in_an_event_and_a_metric(
    provider: FakeProvider, tmp_path: Path, hls_media: Media
):
    async with FakeHls(hls_media) as hls:
        cfg = hls_config(tmp_path, provider, [hls.url], stall_timeout_s=10.0)
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            c = await open_stream(relay.port, "/stream/ch1")
            await c.wait_bytes(100_000, timeout=15)
            hls.freeze()
            frozen = hls.newest()
            await asyncio.sleep(9 * hls.seg_duration)
            hls.heal()  # the window jumps 9 segments: more than it holds
            await until(lambda: named(events, "hls_skipped"), timeout=10, what="hls_skipped")
            ev = named(events, "hls_skipped")[0]
            first_now = hls.newest() - hls.window + 1
            assert 1 <= ev["skipped_segments"] <= first_now - frozen
            assert ev["stream"].startswith("direct/") and ev["channel"] == "ch1"
            fetched = {int(p[4:-3]) for p in hls.paths("/seg")}
            missing = set(range(min(fetched), max(fetched) + 1)) - fetched
            assert len(missing) == ev["skipped_segments"]  # exactly the ones counted
            n = len(c.body)
            await c.wait_bytes(n + 100_000, timeout=10)
            assert not named(events, "failover")
            assert (
                b"relay_hls_skipped_segments_total %d" % ev["skipped_segments"] in relay.metrics.exposition()
            )
            await c.close()


async def test_ffmpeg_decodes_through_hls_ts_hls_failovers_and_a_discontinuity(
    provider: FakeProvider, tmp_path: Path, hls_media: Media, hls_restarted: Media
):
    """HLS -> TS (the playlist 500s), TS -> HLS (upgrade), then the HLS encoder restarts with new
    timestamps behind EXT-X-DISCONTINUITY: ffmpeg sees one clean program throughout."""
    async with FakeHls(hls_media, restarted=hls_restarted) as hls:
        cfg = hls_config(tmp_path, provider, [hls.url], stall_timeout_s=1.0, upgrade_after_s=3.0)
        async with running_relay(cfg, tmp_path) as relay:
            events = recorder(relay)
            ff = await FfmpegDecoder(f"http://127.0.0.1:{relay.port}/stream/ch1", 17).start()
            await ff.decoding()
            capture = await open_stream(relay.port, "/stream/ch1")  # a second viewer records the output
            loop = asyncio.get_running_loop()
            await asyncio.sleep(2)
            hls.playlist_status(500)
            await until(lambda: named(events, "failover"), timeout=10, what="HLS -> TS")
            to_ts = loop.time()
            hls.heal()
            await until(lambda: named(events, "upgrade"), timeout=10, what="TS -> HLS")
            to_hls = loop.time()
            await asyncio.sleep(2)
            at = hls.restart()
            await until(lambda: any(f"/seg{at}.ts" == p for p in hls.paths()), timeout=10, what="restart")
            restart = loop.time() + 1.0  # released after the segments queued before it
            await ff.wait()
            await capture.close()
    recorded = tmp_path / "capture.ts"
    recorded.write_bytes(bytes(capture.body))
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json", str(recorded)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kinds = sorted(s["codec_type"] for s in json.loads(probe.stdout)["streams"])
    span = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(recorded)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    # the restart jumped the upstream's clock by 500 s: rebased like a switch, the capture stays short
    assert float(span.stdout) < 40, span.stdout
    print(f"\nHLS->TS->HLS + discontinuity: {len(ff.errors)} ffmpeg error lines, streams {kinds}")
    assert ff.errors == []
    assert kinds == ["audio", "video"]
    after = [ff.decoded_between(t + 0.5, t + 2.5) for t in (to_ts, to_hls, restart)]
    assert all(n >= 25 for n in after), after
