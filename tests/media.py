"""Real MPEG-TS test media, generated with ffmpeg and cached on disk.

The relay is a byte pump for MPEG-TS, so tests need genuine transport streams (PAT/PMT, PCR, keyframes)
rather than hand-made packets. Generating them takes ~1 s, so files are cached in ``tests/.media/`` under
a name that hashes the exact ffmpeg arguments: changing a parameter (or this module's recipe) regenerates.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import pytest

MEDIA_DIR = Path(__file__).resolve().parent / ".media"

Variant = Literal["h264", "h264b", "audio", "mpeg2"]

# Bump to force regeneration when something outside the argument list changes (e.g. ffmpeg quirks).
_RECIPE_VERSION = 1


def ffmpeg_available() -> bool:
    """True when both ffmpeg and ffprobe are on PATH (FakeProvider paces by the ffprobe duration)."""
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def require_ffmpeg() -> None:
    """Skip the calling test without ffmpeg; in CI (CI=true) fail instead so media tests never go dark."""
    if ffmpeg_available():
        return
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail("ffmpeg/ffprobe not installed, but CI=true requires them")
    pytest.skip("ffmpeg not installed")


def _ffmpeg_args(seconds: float, variant: Variant) -> list[str]:
    """The encoder/muxer arguments for one variant (everything except input and output paths)."""
    common_in = [
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-map", "0:v:0", "-map", "1:a:0",
        "-t", f"{seconds:g}",
    ]  # fmt: skip
    # PAT/PMT every 100 ms so a client joining anywhere syncs quickly.
    mux_common = ["-f", "mpegts", "-pat_period", "0.1", "-sdt_period", "0.5"]
    if variant == "h264":
        return [
            *common_in,
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-g", "25", "-keyint_min", "25", "-sc_threshold", "0",
            "-b:v", "400k", "-maxrate", "400k", "-bufsize", "400k",
            "-c:a", "aac", "-b:a", "64k", "-ac", "2",
            *mux_common,
            "-mpegts_start_pid", "0x100", "-mpegts_pmt_start_pid", "0x1000", "-mpegts_service_id", "1",
        ]  # fmt: skip
    if variant == "h264b":  # the same codecs as another provider would mux them
        return [
            *_ffmpeg_args(seconds, "h264")[: -6],
            "-streamid", "0:0x1e1", "-streamid", "1:0x1e2",
            "-mpegts_pmt_start_pid", "0x1e0", "-mpegts_service_id", "7",
            "-output_ts_offset", "1000",
        ]  # fmt: skip
    if variant == "audio":  # a "radio" feed: what a broken provider stream with no picture looks like
        return [
            "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000", "-t", f"{seconds:g}",
            "-c:a", "aac", "-b:a", "64k", "-ac", "2", *mux_common,
        ]  # fmt: skip
    if variant == "mpeg2":
        return [
            *common_in,
            "-c:v", "mpeg2video", "-g", "25", "-b:v", "600k", "-maxrate", "600k", "-bufsize", "600k",
            "-c:a", "mp2", "-b:a", "128k", "-ac", "2",
            "-streamid", "0:0x1e1", "-streamid", "1:0x1e2",
            *mux_common,
            "-mpegts_pmt_start_pid", "0x1e0", "-mpegts_service_id", "7",
            "-output_ts_offset", "1000",
        ]  # fmt: skip
    raise ValueError(f"unknown variant {variant!r}")


def make_ts(seconds: float = 4, *, variant: Variant = "h264") -> Path:
    """Return a cached MPEG-TS file of ``seconds`` duration, generating it on first use.

    ``h264``: libx264 + AAC, ffmpeg default PIDs (video 0x100, audio 0x101, PMT 0x1000, service 1).
    ``h264b``: the same codecs on PIDs 0x1E1/0x1E2, PMT 0x1E0, service 7, timestamps offset by 1000 s.
    ``mpeg2``: mpeg2video + MP2 on PIDs 0x1E1/0x1E2, PMT 0x1E0, service 7, timestamps offset by 1000 s,
    i.e. everything a relay must not assume stays constant across a failover.
    """
    args = _ffmpeg_args(seconds, variant)
    key = hashlib.sha256(repr((_RECIPE_VERSION, args)).encode()).hexdigest()[:10]
    out = MEDIA_DIR / f"{variant}-{seconds:g}s-{key}.ts"
    if out.exists() and out.stat().st_size > 0:
        return out
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg not installed (call require_ffmpeg() first)")
    MEDIA_DIR.mkdir(parents=True, exist_ok=True)
    # Unique temp name in the same directory + os.replace: parallel test processes never see a partial file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=".tmp", dir=MEDIA_DIR)
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args, str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0 or tmp.stat().st_size == 0:
            raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        tmp.chmod(0o644)  # mkstemp creates 0600
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
