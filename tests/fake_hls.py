"""A fake HLS provider: ffmpeg-made segments served as a live sliding window, in real time.

The segments are made once by ffmpeg's HLS muxer (cached in tests/.media/ like tests/media.py's
files): 1 s segments, each starting with PAT/PMT and a keyframe. The server plays them as a live
channel that has been running for a while: at any moment the playlist lists the newest `window`
segments, one more every segment duration, the media sequence counting up for ever (the media loops,
with an EXT-X-DISCONTINUITY where it wraps, as an honest packager would mark it).

It misbehaves on demand, on 127.0.0.1 only: `freeze` (the playlist stops advancing), `fail_segment`
(404 the next segments), `playlist_status` (404/500 the playlist, for all or one variant), `endlist`
(EXT-X-ENDLIST), `restart` (the encoder restarts: EXT-X-DISCONTINUITY and new timestamps),
`encrypt=True` (AES-128, IV from the media sequence number), and `variants` (a master playlist
/master.m3u8 over media playlists /v0/index.m3u8, /v1/...). HTTP/1.1 keep-alive, so a client's
connection reuse shows in `connections` and `requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from relay.core.hls_crypto import encrypt_segment
from tests.media import MEDIA_DIR

HOST = "127.0.0.1"
KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
_RECIPE = 1


def _hls_args(seconds: int, offset: float) -> list[str]:
    return [
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000",
        "-map", "0:v:0", "-map", "1:a:0", "-t", str(seconds),
        "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-g", "25", "-keyint_min", "25", "-sc_threshold", "0",
        "-b:v", "400k", "-maxrate", "400k", "-bufsize", "400k",
        "-c:a", "aac", "-b:a", "64k", "-ac", "2",
        "-output_ts_offset", f"{offset:g}",
        "-f", "hls", "-hls_time", "1", "-hls_list_size", "0", "-hls_segment_type", "mpegts",
    ]  # fmt: skip


@dataclass(frozen=True)
class Media:
    """A cached set of segments: their bytes and durations, in order."""

    segments: tuple[bytes, ...]
    durations: tuple[float, ...]


def make_hls(seconds: int = 30, *, offset: float = 0.0) -> Media:
    """ffmpeg's HLS muxer output for `seconds` of test media (timestamps from `offset`), cached."""
    args = _hls_args(seconds, offset)
    key = hashlib.sha256(repr((_RECIPE, args)).encode()).hexdigest()[:10]
    out = MEDIA_DIR / f"hls-{seconds}s-{key}"
    if not (out / "index.m3u8").exists():
        MEDIA_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=MEDIA_DIR))
        cmd = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args]
        cmd += ["-hls_segment_filename", str(tmp / "s%05d.ts"), str(tmp / "index.m3u8")]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {proc.stderr[-2000:]}")
            with contextlib.suppress(OSError):  # a parallel run won: use its copy
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    text = (out / "index.m3u8").read_text()
    durations = tuple(float(d) for d in re.findall(r"#EXTINF:([0-9.]+)", text))
    names = re.findall(r"^(s\d+\.ts)$", text, re.M)
    return Media(tuple((out / n).read_bytes() for n in names), durations)


@dataclass
class _Timeline:
    """Which media a sequence number plays: the normal loop, then from `restart_at` the restarted one."""

    restart_at: int | None = None


@dataclass
class FakeHls:
    media: Media
    restarted: Media | None = None  # what `restart()` switches to (new timestamps)
    window: int = 6
    encrypt: bool = False
    variants: tuple[int, ...] = ()  # BANDWIDTHs: a master playlist over /v{i}/index.m3u8
    playlist_content_type: str = "application/vnd.apple.mpegurl"
    port: int = 0
    requests: list[tuple[int, str]] = field(default_factory=list)  # (connection number, path)
    connections: int = 0
    _server: asyncio.base_events.Server | None = None
    _t0: float = 0.0
    _frozen_at: int | None = None
    _fail_segments: int = 0
    _failed_segments: list[int] = field(default_factory=list)
    _playlist_status: dict[int | None, int] = field(default_factory=dict)  # variant (None: all) -> code
    _endlist: bool = False
    _timeline: _Timeline = field(default_factory=_Timeline)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The channel's URL: the master playlist with variants, else the media playlist."""
        return f"http://{HOST}:{self.port}/{'master' if self.variants else 'index'}.m3u8"

    @property
    def seg_duration(self) -> float:
        return self.media.durations[0]

    async def __aenter__(self) -> FakeHls:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        # the channel has been live for a while: `window` segments are there already
        self._t0 = time.monotonic()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    # ---- controls ---------------------------------------------------------------------------

    def newest(self) -> int:
        """The newest segment's media sequence number now."""
        if self._frozen_at is not None:
            return self._frozen_at
        return self.window - 1 + int((time.monotonic() - self._t0) / self.seg_duration)

    def freeze(self) -> float:
        """The playlist stops advancing (segments already listed stay fetchable). Returns when."""
        self._frozen_at = self.newest()
        return time.monotonic()

    def fail_segment(self, times: int = 1_000_000) -> float:
        """404 the next `times` segment requests."""
        self._fail_segments = times
        return time.monotonic()

    def playlist_status(self, code: int, variant: int | None = None) -> float:
        """Answer the playlist (all, or one variant's) with `code`."""
        self._playlist_status[variant] = code
        return time.monotonic()

    def endlist(self) -> float:
        self._endlist = True
        return time.monotonic()

    def restart(self) -> int:
        """The encoder restarts: from the next segment on, new timestamps after a discontinuity."""
        assert self.restarted is not None
        self._timeline.restart_at = self.newest() + 1
        return self._timeline.restart_at

    def heal(self) -> None:
        """Back to normal: advancing, every request answered (the window jumps to real time)."""
        self._frozen_at = None
        self._fail_segments = 0
        self._playlist_status.clear()
        self._endlist = False

    def paths(self, pattern: str = "") -> list[str]:
        return [p for _, p in self.requests if pattern in p]

    # ---- content ----------------------------------------------------------------------------

    def _source(self, seq: int) -> tuple[bytes, float, bool]:
        """(bytes, duration, discontinuity before it) of segment `seq`."""
        r = self._timeline.restart_at
        if r is not None and seq >= r and self.restarted is not None:
            m, i = self.restarted, seq - r
            disc = i == 0 or i % len(m.segments) == 0
        else:
            m, i = self.media, seq
            disc = i > 0 and i % len(m.segments) == 0
        i %= len(m.segments)
        return m.segments[i], m.durations[i], disc

    def playlist(self) -> str:
        newest = self.newest()
        first = max(0, newest - self.window + 1)
        target = max(round(d) for d in self.media.durations)
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}"]
        lines.append(f"#EXT-X-MEDIA-SEQUENCE:{first}")
        if self.encrypt:
            lines.append('#EXT-X-KEY:METHOD=AES-128,URI="/key.bin"')
        for seq in range(first, newest + 1):
            _, dur, disc = self._source(seq)
            if disc:
                lines.append("#EXT-X-DISCONTINUITY")
            lines += [f"#EXTINF:{dur:.3f},", f"seg{seq}.ts"]
        if self._endlist:
            lines.append("#EXT-X-ENDLIST")
        return "\n".join(lines) + "\n"

    def master(self) -> str:
        lines = ["#EXTM3U"]
        for i, bw in enumerate(self.variants):
            lines += [f"#EXT-X-STREAM-INF:BANDWIDTH={bw},RESOLUTION=320x240", f"v{i}/index.m3u8"]
        return "\n".join(lines) + "\n"

    def _answer(self, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        variant: int | None = None
        if m := re.fullmatch(r"/v(\d+)(/.*)", path):
            variant, path = int(m.group(1)), m.group(2)
            if variant >= len(self.variants):
                return 404, "text/plain", b"no such variant\n"
        if path == "/master.m3u8" and self.variants:
            return 200, self.playlist_content_type, self.master().encode()
        if path == "/index.m3u8":
            code = self._playlist_status.get(variant, self._playlist_status.get(None))
            if code is not None:
                return code, "text/plain", f"{code}\n".encode()
            return 200, self.playlist_content_type, self.playlist().encode()
        if path == "/key.bin" and self.encrypt:
            return 200, "application/octet-stream", KEY
        if m := re.fullmatch(r"/seg(\d+)\.ts", path):
            seq = int(m.group(1))
            if self._fail_segments > 0:
                self._fail_segments -= 1
                self._failed_segments.append(seq)
                return 404, "text/plain", b"gone\n"
            if seq > self.newest() or seq < self.newest() - 3 * self.window:
                return 404, "text/plain", b"not in the window\n"
            data, _, _ = self._source(seq)
            if self.encrypt:
                data = encrypt_segment(data, KEY, seq.to_bytes(16, "big"))
            return 200, "video/mp2t", data
        return 404, "text/plain", b"not found\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode("latin-1").split()
                if len(line) < 2:
                    return
                path = line[1]
                self.requests.append((conn, path))
                code, ctype, body = self._answer(path)
                close = b"connection: close" in head.lower()
                writer.write(
                    f"HTTP/1.1 {code} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                if close:
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
