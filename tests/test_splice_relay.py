"""Issue 4 end to end: ffmpeg reads a channel whose upstreams differ in PIDs, service id and timeline
while the relay fails over every few seconds (drops and stalls, in turn). With the splice it sees one
continuous program; without it (failover.splice: false) it reports the errors peers' users see. Both
counts are printed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from pathlib import Path

import orjson

from tests import fake_provider as fp
from tests.fake_provider import FakeProvider
from tests.ffmpeg_client import FfmpegDecoder
from tests.harness import TS, config_for, open_stream, read_events, request, running_relay, until
from tests.media import make_ts, require_ffmpeg
from tests.tsbuild import Upstream, pid_of

SWITCHES = 4
EVERY_S = 2.5
STALL_S = 1.5  # longer than the splicer's hold_max_s, as a real 5 s stall is


async def relay_through_failovers(
    tmp: Path, *, splice: bool, second: str = "h264b", transcode: bool = True
) -> dict:
    """ffmpeg decodes the channel while the current upstream is dropped every EVERY_S seconds."""
    require_ffmpeg()
    # longer than any one upstream lives here: the fake provider loops its file, and a loop's
    # timestamp jump back is the provider's own discontinuity, not the relay's
    a_media, b_media = make_ts(12), make_ts(12, variant=second)  # type: ignore[arg-type]
    async with FakeProvider(a_media) as pa, FakeProvider(b_media) as pb:
        cfg = config_for(
            tmp, pa, {"ch": [("a", 1), ("b", 2)]}, urls={"b": pb.url}, splice=splice, stall_timeout_s=STALL_S
        )
        cfg["failover"]["transcode"] = transcode
        async with running_relay(cfg, tmp) as relay:
            ff = await FfmpegDecoder(
                f"http://127.0.0.1:{relay.port}/stream/ch", SWITCHES * EVERY_S + SWITCHES // 2 * STALL_S + 3
            ).start()
            await ff.decoding()
            capture = await open_stream(relay.port, "/stream/ch")  # a second viewer records the output
            switches = []
            for i in range(SWITCHES):
                await asyncio.sleep(EVERY_S)
                prov, sid = (pa, 1) if i % 2 == 0 else (pb, 2)
                if i % 2:  # a stall leaves a frame half-sent; detection takes stall_timeout_s
                    switches.append(prov.stall(sid) + STALL_S)
                    await asyncio.sleep(STALL_S)
                else:
                    switches.append(await prov.drop(sid))
            await ff.wait()
            await capture.close()
            recorded = tmp / "capture.ts"
            recorded.write_bytes(bytes(capture.body))
            await relay.events.flush()
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json", str(recorded)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    kinds = [s["codec_type"] for s in json.loads(probe.stdout)["streams"]]

    return {
        "errors": ff.errors,
        "kinds": kinds,
        "after_each_switch": [ff.decoded_between(t + 0.3, t + EVERY_S) for t in switches],
        "frames": ff.total,
        "transcodes": [e for e in read_events(tmp) if e["event"] == "transcode"],
    }


async def test_given_failovers_between_differently_muxed_upstreams_then_ffmpeg_sees_one_clean_program(
    tmp_path: Path,
):
    r = await relay_through_failovers(tmp_path, splice=True)
    print(f"\nspliced relay: {len(r['errors'])} ffmpeg error lines, streams {r['kinds']}")
    assert r["errors"] == []
    assert sorted(r["kinds"]) == ["audio", "video"]  # one of each for the whole capture
    assert all(n >= 25 for n in r["after_each_switch"]), r["after_each_switch"]


async def test_without_the_splice_the_same_failovers_break_the_demuxer(tmp_path: Path):
    """The contrast: a plain byte relay (alignment only) hands ffmpeg what peers hand Plex."""
    r = await relay_through_failovers(tmp_path, splice=False)
    print(f"\nplain relay: {len(r['errors'])} ffmpeg error lines, streams {r['kinds']}")
    assert len(r["errors"]) > 0 or len(r["kinds"]) > 2


async def test_given_a_codec_change_at_a_switch_then_it_is_re_encoded_and_ffmpeg_sees_one_clean_program(
    tmp_path: Path,
):
    """H.264/AAC <-> MPEG-2/MP2: the MPEG-2 periods are re-encoded to H.264/AAC (ffmpeg keeps a PID's
    first codec, and a player the streams it mapped at the start), so the client decodes every period
    with the codecs it started with."""
    r = await relay_through_failovers(tmp_path, splice=True, second="mpeg2")
    print(f"\ncodec change, re-encoded: {len(r['errors'])} ffmpeg error lines, streams {r['kinds']}")
    assert r["errors"] == []
    assert sorted(r["kinds"]) == ["audio", "video"]
    assert all(n >= 25 for n in r["after_each_switch"]), r["after_each_switch"]
    # the two MPEG-2 periods (switches 1 and 3) were re-encoded, the H.264 ones not
    assert [(e["to_stream"], e["from_codecs"], e["to_codecs"]) for e in r["transcodes"]] == [
        ("b/2", "mpeg2video/mp2", "h264/aac")
    ] * 2


async def test_given_a_codec_change_without_transcode_then_the_new_codec_gets_pids_of_its_own(tmp_path: Path):
    """failover.transcode: false: nothing is corrupt, the client sees a stream per codec, and the ffmpeg
    CLI decodes only the streams it mapped at the start, i.e. the H.264 periods (after switches 2 and 4)."""
    r = await relay_through_failovers(tmp_path, splice=True, second="mpeg2", transcode=False)
    assert r["errors"] == []
    assert sorted(r["kinds"]) == ["audio", "audio", "video", "video"] and r["transcodes"] == []
    back_on_h264 = r["after_each_switch"][1::2]
    assert all(n >= 25 for n in back_on_h264), r["after_each_switch"]


async def test_given_a_backup_with_audio_but_no_video_then_it_fails_over_for_no_video(tmp_path: Path):
    require_ffmpeg()
    async with FakeProvider(make_ts()) as good, FakeProvider(make_ts(variant="audio")) as radio:
        cfg = config_for(
            tmp_path, good, {"ch": [("a", 1), ("b", 2), ("c", 3)]}, urls={"b": radio.url}, no_video_s=1.0
        )
        async with running_relay(cfg, tmp_path) as relay:
            c = await open_stream(relay.port, "/stream/ch")
            await c.wait_bytes(20_000)
            await good.drop(1)  # -> b/2, which has sound and no picture
            await until(lambda: good.active(3) == 1, timeout=6, what="NoVideo failover to c/3")
            await c.wait_bytes(len(c.body) + 20_000)
            await relay.events.flush()
            fo = [e for e in read_events(tmp_path) if e["event"] == "failover"]
            assert [(e["from_stream"], e["to_stream"], e["reason"]) for e in fo] == [
                ("a/1", "b/2", "StreamError"),
                ("b/2", "c/3", "NoVideo"),
            ]
            await c.close()


async def test_given_hold_s_when_every_stream_fails_then_response_stays_open_fed_and_resumes(
    provider: FakeProvider, tmp_path: Path
):
    cfg = config_for(tmp_path, provider, {"ch": [("a", 1), ("b", 2)]}, hold_s=20.0)
    async with running_relay(cfg, tmp_path) as relay:
        c = await open_stream(relay.port, "/stream/ch")
        await c.wait_bytes(20_000)
        provider.set(1, fp.status(503))
        provider.set(2, fp.status(503))
        await provider.drop(1)
        await asyncio.sleep(2.0)
        assert not c.closed  # held open ...
        n = len(c.body)
        await asyncio.sleep(0.6)
        assert len(c.body) > n  # ... and fed (null packets, PAT/PMT) so the client's reads never time out
        gap = bytes(c.body[n:])
        pids = {((gap[i + 1] & 0x1F) << 8) | gap[i + 2] for i in range(0, len(gap) - 187, 188)}
        assert 0x1FFF in pids and pids <= {0x0, 0x1000, 0x1FFF}
        provider.set(2, fp.ok())  # a backup comes back
        await until(lambda: provider.active(2) == 1, timeout=10, what="resume on b/2")
        await c.wait_bytes(len(c.body) + 50_000)
        await relay.events.flush()
        names = [e["event"] for e in read_events(tmp_path)]
        assert "holding" in names and "exhausted" not in names
        fo = next(e for e in read_events(tmp_path) if e["event"] == "failover")
        assert fo["to_stream"] == "b/2" and fo["held_retries"] >= 1
        await c.close()


async def test_given_keyframes_that_take_long_to_arrive_then_the_frame_hold_leaves_the_client_no_gap(
    tmp_path: Path,
):
    """Issue 6's stall target with issue 4's frame hold on: a provider sends a 60-packet keyframe every
    second at the stream's pace, so each takes ~0.3 s to arrive and is held whole. The output trails the
    upstream by that hold, so the client keeps getting bytes at the provider's pace all along, and every
    video frame it gets is whole."""
    media = tmp_path / "big-keyframes.ts"
    media.write_bytes(b"".join(Upstream(key_packets=60, gop=25).stream(100)))  # 4 s at 25 frames/s
    async with FakeProvider(media, duration=4.0) as provider:
        cfg = config_for(tmp_path, provider, {"ch": [("a", 1)]})
        async with running_relay(cfg, tmp_path) as relay:
            c = await open_stream(relay.port, "/stream/ch")
            await c.wait_bytes(TS)
            started = time.monotonic()
            await asyncio.sleep(3.5)  # three keyframes
            gap = c.max_gap(after=started)
            raw = await request(relay.port, b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            lag_ms = orjson.loads(raw.partition(b"\r\n\r\n")[2])["sessions"][0]["lag_ms"]
            await c.close()
    assert 250 < lag_ms < 600, "/status shows the lag: about one keyframe's arrival, plus a read"
    assert gap < 0.12, f"the client waited {gap * 1000:.0f} ms (a held keyframe takes ~320 ms to arrive)"
    body = bytes(c.body[: len(c.body) // TS * TS])
    packets = [body[i : i + TS] for i in range(0, len(body), TS)]
    starts = [n for n, p in enumerate(packets) if pid_of(p) == 0x100 and p[1] & 0x40]
    sizes = {sum(1 for p in packets[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)}
    assert sizes == {3, 60}, "every video PES the client got is whole (small frames and keyframes)"
