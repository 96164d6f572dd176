"""ffmpeg as the real client: it decodes a relayed stream and reports its frame count as it goes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.media import require_ffmpeg


@dataclass
class FfmpegDecoder:
    """`ffmpeg -i URL -t SECONDS -f null -` with `-progress`: frames decoded over (loop) time, errors."""

    url: str
    seconds: float
    frames: list[tuple[float, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    returncode: int | None = None
    _proc: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> FfmpegDecoder:
        require_ffmpeg()
        self._proc = await asyncio.create_subprocess_exec(
            "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-rw_timeout", "5000000",
            "-analyzeduration", "1000000", "-probesize", "1000000", "-i", self.url,
            "-t", str(self.seconds), "-f", "null", "-", "-progress", "pipe:1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._progress())
        return self

    async def _progress(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        loop = asyncio.get_running_loop()
        async for raw in self._proc.stdout:
            line = raw.decode().strip()
            if line.startswith("frame="):
                self.frames.append((loop.time(), int(line.split("=")[1])))

    async def decoding(self, min_frames: int = 10, timeout: float = 15) -> None:
        """Wait until decoding has begun."""
        async with asyncio.timeout(timeout):
            while not self.frames or self.frames[-1][1] < min_frames:
                await asyncio.sleep(0.05)

    async def wait(self, timeout: float = 40) -> None:
        assert self._proc is not None and self._reader is not None and self._proc.stderr is not None
        async with asyncio.timeout(timeout):
            self.returncode = await self._proc.wait()
            await self._reader
        self.errors = [ln for ln in (await self._proc.stderr.read()).decode().splitlines() if ln.strip()]

    def decoded_between(self, a: float, b: float) -> int:
        inside = [f for t, f in self.frames if a <= t <= b]
        return max(inside) - min(inside) if len(inside) > 1 else 0

    @property
    def total(self) -> int:
        return self.frames[-1][1] if self.frames else 0
