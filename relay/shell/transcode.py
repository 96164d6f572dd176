"""Re-encoding a backup whose codecs differ from what the client already decodes.

A decoder keeps the codec a PID started with, and a player keeps the streams it mapped at the start:
after H.264/AAC, a backup in MPEG-2/MP2 either decodes as garbage (same PIDs) or is ignored (new
PIDs). When a switch brings other codecs, the session pipes that upstream's TS through ffmpeg, which
re-encodes only the streams whose codec differs (the others are copied) to the output's codecs; its
output is spliced in like any upstream. It costs CPU only while such a backup is current, and ends
with it (an upgrade back to the primary needs no transcoder). `Transcoder` is one ffmpeg process;
`Transcoders` is a session's set of them, one per upstream attempt, and their lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
from collections.abc import Callable

from relay.ts import PacketAligner

log = logging.getLogger("relay.shell.transcode")

# stream_type -> (ffmpeg encoder, its options) for the codecs a client may have started with
VIDEO_ENCODERS: dict[int, list[str]] = {
    0x1B: ["libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p"],
    0x02: ["mpeg2video", "-q:v", "3"],
    0x01: ["mpeg1video", "-q:v", "3"],
    0x24: ["libx265", "-preset", "ultrafast", "-tune", "zerolatency"],
}
AUDIO_ENCODERS: dict[int, list[str]] = {
    0x0F: ["aac", "-b:a", "160k"],
    0x03: ["mp2", "-b:a", "192k"],
    0x04: ["mp2", "-b:a", "192k"],
    0x81: ["ac3", "-b:a", "192k"],
    0x87: ["eac3", "-b:a", "192k"],
}


def ffmpeg_args(
    want: tuple[int | None, int | None], have: tuple[int | None, int | None], ffmpeg: str = "ffmpeg"
) -> list[str] | None:
    """The ffmpeg command turning an upstream with stream types ``have`` into ``want`` (video, audio).

    None when a wanted codec has no encoder here: the session then lets the new codec in on PIDs of its
    own, as without a transcoder.
    """
    args = [ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-fflags", "+genpts+discardcorrupt"]
    args += ["-probesize", "200000", "-analyzeduration", "300000", "-f", "mpegts", "-i", "pipe:0"]
    for kind, wanted, got, encoders in (
        ("v", want[0], have[0], VIDEO_ENCODERS),
        ("a", want[1], have[1], AUDIO_ENCODERS),
    ):
        if wanted is None or got is None:
            continue
        args += ["-map", f"0:{kind}:0"]
        if wanted == got:
            args += [f"-c:{kind}", "copy"]
        elif wanted in encoders:
            args += [f"-c:{kind}", *encoders[wanted]]
            if kind == "v":
                args += ["-g", "25"]  # a keyframe a second at most: joiners and the next switch
        else:
            return None
    return [*args, "-f", "mpegts", "-muxdelay", "0", "-muxpreload", "0", "pipe:1"]


STREAM_TYPE_NAMES = {
    0x01: "mpeg1video", 0x02: "mpeg2video", 0x1B: "h264", 0x24: "hevc", 0x10: "mpeg4",
    0x03: "mp2", 0x04: "mp2", 0x0F: "aac", 0x11: "aac_latm", 0x81: "ac3", 0x87: "eac3",
}  # fmt: skip


def describe(types: tuple[int | None, int | None]) -> str:
    """'h264/aac' for (0x1B, 0x0F): what an event names."""
    return "/".join(STREAM_TYPE_NAMES.get(t, f"0x{t:02x}") for t in types if t is not None)


def available() -> str | None:
    return shutil.which("ffmpeg")


class Transcoder:
    """One ffmpeg process: raw TS written in, whole re-encoded packets handed to ``on_packets``.

    ``on_end`` is called once if ffmpeg exits or fails before ``close()`` (the attempt then failed).
    ``on_backlog(True)`` when more than ``max_backlog`` bytes wait for ffmpeg (it encodes slower than
    the stream arrives: pause the upstream), ``on_backlog(False)`` once it caught up.
    """

    def __init__(
        self,
        args: list[str],
        on_packets: Callable[[list[memoryview]], None],
        on_end: Callable[[], None],
        on_backlog: Callable[[bool], None] = lambda _: None,
        max_backlog: int = 4 << 20,
    ) -> None:
        self.args = args
        self.on_packets = on_packets
        self.on_end = on_end
        self.on_backlog = on_backlog
        self.max_backlog = max_backlog
        self._draining: asyncio.Task[None] | None = None
        self.aligner = PacketAligner()
        self.closed = False
        self.bytes_in = 0
        self.bytes_out = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._queue: list[bytes] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    def write(self, views: list[memoryview] | list[bytes | memoryview]) -> None:
        data = b"".join(views)
        self.bytes_in += len(data)
        proc = self._proc
        if proc is None or proc.stdin is None:
            self._queue.append(data)  # ffmpeg still starting
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            proc.stdin.write(data)
            if self._draining is None and proc.stdin.transport.get_write_buffer_size() > self.max_backlog:
                self.on_backlog(True)
                self._draining = asyncio.get_running_loop().create_task(self._drain(proc.stdin))

    async def _drain(self, stdin: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await stdin.drain()
        self._draining = None
        if not self.closed:
            self.on_backlog(False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._task.cancel()
        if self._draining is not None:
            self._draining.cancel()
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    async def _run(self) -> None:
        try:
            self._proc = proc = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert proc.stdin is not None and proc.stdout is not None
            for data in self._queue:
                proc.stdin.write(data)
            self._queue.clear()
            while data := await proc.stdout.read(1 << 16):
                self.bytes_out += len(data)
                views = self.aligner.feed(data)
                if views and not self.closed:
                    self.on_packets(views)
            await proc.wait()
        except asyncio.CancelledError:
            raise
        except OSError as e:
            log.warning("transcoder did not start: %s", type(e).__name__)
        finally:
            if self._proc is not None and self._proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._proc.wait())
        if not self.closed:
            self.closed = True
            self.on_end()


class Transcoders:
    """The re-encoders of one session, at most one per upstream attempt: started when the current
    upstream brings other codecs than the output's, fed that upstream's bytes, closed with it.

    The callbacks name the attempt: `on_packets(attempt, views)` re-encoded packets,
    `on_end(attempt)` ffmpeg gave up (the attempt then failed), `on_backlog(attempt, behind)` ffmpeg
    is behind the stream (pause that upstream) or caught up.
    """

    def __init__(
        self,
        ffmpeg: str | None,
        on_packets: Callable[[int, list[memoryview]], None],
        on_end: Callable[[int], None],
        on_backlog: Callable[[int, bool], None],
    ) -> None:
        self.ffmpeg = ffmpeg  # None: no ffmpeg here (or transcode off): a new codec gets PIDs of its own
        self._on_packets = on_packets
        self._on_end = on_end
        self._on_backlog = on_backlog
        self._by_attempt: dict[int, Transcoder] = {}
        self.get = self._by_attempt.get  # the hot path asks this for every read

    def can(self, want: tuple[int | None, int | None], have: tuple[int | None, int | None]) -> bool:
        """Whether an upstream with stream types `have` can be re-encoded to `want` here."""
        return self.ffmpeg is not None and ffmpeg_args(want, have, self.ffmpeg) is not None

    def start(
        self, attempt: int, want: tuple[int | None, int | None], have: tuple[int | None, int | None]
    ) -> Transcoder:
        args = ffmpeg_args(want, have, self.ffmpeg or "ffmpeg")
        assert args is not None  # the splicer held the upstream out only if `can` said so
        tx = Transcoder(
            args,
            on_packets=functools.partial(self._on_packets, attempt),
            on_end=functools.partial(self._ended, attempt),
            on_backlog=functools.partial(self._on_backlog, attempt),
        )
        self._by_attempt[attempt] = tx
        return tx

    def __contains__(self, attempt: int) -> bool:
        return attempt in self._by_attempt

    def close(self, attempt: int) -> None:
        tx = self._by_attempt.pop(attempt, None)
        if tx is not None:
            tx.close()

    def close_all(self) -> None:
        for tx in self._by_attempt.values():
            tx.close()
        self._by_attempt.clear()

    def _ended(self, attempt: int) -> None:
        self._by_attempt.pop(attempt, None)
        self._on_end(attempt)
