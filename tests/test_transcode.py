"""relay/transcode.py and the splice's side of it: a backup in other codecs is held out and re-encoded."""

from __future__ import annotations

import asyncio

from relay.shell.transcode import Transcoder, describe, ffmpeg_args
from relay.ts import Splicer
from tests.media import make_ts, require_ffmpeg
from tests.tsbuild import B_upstream, Upstream, pid_of, run

H264, AAC, MPEG2, MP2 = 0x1B, 0x0F, 0x02, 0x03


def test_only_the_streams_whose_codec_differs_are_re_encoded() -> None:
    both = ffmpeg_args((H264, AAC), (MPEG2, MP2))
    assert both is not None
    assert both[both.index("-c:v") + 1] == "libx264" and both[both.index("-c:a") + 1] == "aac"
    audio_only = ffmpeg_args((H264, AAC), (H264, MP2))
    assert audio_only is not None and audio_only[audio_only.index("-c:v") + 1] == "copy"
    assert audio_only[audio_only.index("-c:a") + 1] == "aac"
    assert ffmpeg_args((0x42, AAC), (MPEG2, AAC)) is None  # no encoder for what the client decodes
    assert describe((MPEG2, MP2)) == "mpeg2video/mp2"


def test_a_backup_in_other_codecs_is_held_out_when_it_can_be_re_encoded() -> None:
    """Given H.264/AAC out, When the next upstream is MPEG-2 and a transcoder can serve it, Then none
    of its packets go out and the splicer reports the codec change; without one it gets new PIDs."""
    for transcodable, expect_held in ((lambda want, have: True, True), (None, False)):
        splicer = Splicer(transcodable=transcodable)
        run(splicer, Upstream().stream(10))
        splicer.switch(1.0)
        out = run(splicer, B_upstream(video_type=MPEG2).stream(10), now=1.0)
        assert splicer.codec_change is expect_held
        if expect_held:
            assert {pid_of(p) for p in out} <= {0, 0x1000, 0x1FFF, 0x100, 0x101}  # only the held-back tail
            assert splicer.output_types() == (H264, AAC) and splicer.upstream_types() == (MPEG2, AAC)
        else:
            assert 0x1E1 in {pid_of(p) for p in out}  # the MPEG-2 video on a PID of its own


async def test_the_transcoder_turns_mpeg2_mp2_into_h264_aac() -> None:
    require_ffmpeg()
    args = ffmpeg_args((H264, AAC), (MPEG2, MP2))
    assert args is not None
    got: list[bytes] = []
    ended = asyncio.Event()
    tx = Transcoder(args, on_packets=lambda views: got.extend(bytes(v) for v in views), on_end=ended.set)
    data = make_ts(4, variant="mpeg2").read_bytes()
    for i in range(0, len(data), 65536):
        tx.write([memoryview(data)[i : i + 65536]])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while sum(map(len, got)) < 100_000 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    tx.close()
    splicer = Splicer()
    splicer.feed([b"".join(got)], 0.0)
    assert splicer.upstream_types() == (H264, AAC)
    assert not ended.is_set()  # closed by us, not ended by itself


async def test_a_transcoder_that_cannot_start_reports_its_end() -> None:
    ended = asyncio.Event()
    tx = Transcoder(["/nonexistent/ffmpeg"], on_packets=lambda views: None, on_end=ended.set)
    tx.write([memoryview(b"x" * 188)])
    await asyncio.wait_for(ended.wait(), 5)
    assert tx.closed


async def test_a_transcoder_behind_the_stream_asks_for_the_upstream_to_pause_and_resume() -> None:
    backlog: list[bool] = []
    slow = ["sh", "-c", "sleep 0.5; cat >/dev/null"]  # reads its input only after half a second
    tx = Transcoder(slow, lambda views: None, lambda: None, on_backlog=backlog.append, max_backlog=64 << 10)
    await asyncio.sleep(0.2)
    for _ in range(64):
        tx.write([memoryview(bytes(65536))])
    assert backlog == [True]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while len(backlog) < 2 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    tx.close()
    assert backlog == [True, False]
