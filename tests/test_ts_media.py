"""relay.ts on real media: spliced files decoded by ffmpeg (needs ffmpeg/ffprobe; not a unit test).

Given A (H.264/AAC) and other providers' layouts of real encodes, When the Splicer switches between them
mid-frame and mid-GOP, Then ffmpeg decodes one clean program; without the splice it reports errors.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from relay.ts import PacketAligner, Splicer
from tests.media import MEDIA_DIR, require_ffmpeg
from tests.tsbuild import join


def _remux_like_b(src: Path) -> Path:
    """ts_file's H.264/AAC remuxed in the other provider's layout: 0x1E1/0x1E2, PMT 0x1E0, service 7."""
    out = MEDIA_DIR / f"{src.stem}-as-b.ts"
    if out.exists() and out.stat().st_size > 0:
        return out
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-map", "0", "-c", "copy"]
    cmd += ["-streamid", "0:0x1e1", "-streamid", "1:0x1e2", "-mpegts_pmt_start_pid", "0x1E0"]
    cmd += ["-mpegts_service_id", "7", "-output_ts_offset", "1000", "-f", "mpegts", str(tmp)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    tmp.replace(out)
    return out


def _splice_files(segments: list[tuple[Path, float, float]], tmp_path: Path, enabled: bool = True) -> Path:
    """Relay each file's [a, b) fraction (cut mid-packet, i.e. mid-PES and mid-GOP) with a switch between."""
    splicer = Splicer(enabled=enabled)
    out: list[bytes | memoryview] = []
    now = 0.0
    for k, (path, a, b) in enumerate(segments):
        if k:
            splicer.switch(now)
        data = path.read_bytes()
        data = data[int(len(data) * a) + 77 : int(len(data) * b) + 33]
        aligner = PacketAligner()
        for i in range(0, len(data), 1500):
            now += 0.004
            out += splicer.feed(aligner.feed(data[i : i + 1500]), now)
        assert splicer.entered, f"segment {k} never entered"
    out += splicer.poll(now + 60)  # the end: the upstream went silent, what trailed by the lag goes
    target = tmp_path / "out.ts"
    target.write_bytes(join(out))
    return target


def _ffmpeg_errors(path: Path) -> list[str]:
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [line for line in proc.stderr.splitlines() if line.strip()]


def _streams(path: Path) -> list[tuple[str, str]]:
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,codec_name", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [(s["codec_type"], s["codec_name"]) for s in json.loads(proc.stdout)["streams"]]


def _non_monotonic_dts(path: Path) -> list[str]:
    """What `-v error` does not show: a DTS that does not increase within a stream (a transcoder desyncs)."""
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "packet=stream_index,dts", "-of", "json", str(path)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    last: dict[int, int] = {}
    bad = []
    for packet in json.loads(proc.stdout)["packets"]:
        s, dts = packet["stream_index"], packet.get("dts")
        if dts is None:
            continue
        if s in last and dts <= last[s]:
            bad.append(f"stream {s}: {last[s]} -> {dts}")
        last[s] = dts
    return bad


def test_real_media_same_codecs_other_pids_play_as_one_program(ts_file: Path, tmp_path: Path) -> None:
    """Given A (H.264/AAC, 0x100/0x101) and the same codecs on B's PIDs/service/timeline,
    When the relay switches A -> B -> A mid-frame and mid-GOP,
    Then ffmpeg reports no error and sees one video + one audio stream."""
    require_ffmpeg()
    other = _remux_like_b(ts_file)
    out = _splice_files([(ts_file, 0.0, 0.45), (other, 0.3, 0.8), (ts_file, 0.55, 1.0)], tmp_path)
    assert _ffmpeg_errors(out) == []
    assert _non_monotonic_dts(out) == []
    assert sorted(_streams(out)) == [("audio", "aac"), ("video", "h264")]


def test_real_media_codec_change_decodes_cleanly(ts_file: Path, ts_file_mpeg2: Path, tmp_path: Path) -> None:
    """Given A (H.264/AAC) and B (MPEG-2/MP2, other PIDs, service 7, +1000 s), When A -> B -> A,
    Then ffmpeg reports no error. The client sees one stream per codec: ffmpeg keeps the codec of a PID
    it knows, so a changed codec must get a PID (hence a stream) of its own to decode at all."""
    require_ffmpeg()
    out = _splice_files([(ts_file, 0.0, 0.45), (ts_file_mpeg2, 0.2, 0.7), (ts_file, 0.55, 1.0)], tmp_path)
    assert _ffmpeg_errors(out) == []
    assert _non_monotonic_dts(out) == []
    assert sorted(_streams(out)) == [
        ("audio", "aac"),
        ("audio", "mp2"),
        ("video", "h264"),
        ("video", "mpeg2video"),
    ]


def test_real_media_passthrough_is_what_the_splice_fixes(ts_file: Path, tmp_path: Path) -> None:
    """The same switches without the splice: the client sees the errors the splice removes (recorded)."""
    require_ffmpeg()
    other = _remux_like_b(ts_file)
    out = _splice_files(
        [(ts_file, 0.0, 0.45), (other, 0.3, 0.8), (ts_file, 0.55, 1.0)], tmp_path, enabled=False
    )
    assert len(_ffmpeg_errors(out)) > 0
