"""The JSON-lines event file as an append-only file that rotates by size and reopens on request.

Rotation and reopening happen only between two writes, and a write is a whole batch of whole lines,
so every event is in exactly one file: none is cut, lost or written twice across a rotation.
`events.jsonl` is renamed to `events.jsonl.1` (the older ones move up, beyond `keep` they are
deleted), as logrotate would; a reader that follows by name (`tail -F`, `relay events -f`) picks the
new file up. `request_reopen` (SIGHUP) is for an outside logrotate: the file it renamed is closed and
a new one opened at the path before the next write, so nothing is written to the old one after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import aiofiles

log = logging.getLogger("relay.storage.rotating")


def rotated_paths(path: Path, keep: int) -> list[Path]:
    """events.jsonl.1 (newest) .. events.jsonl.{keep}."""
    return [path.with_name(f"{path.name}.{i}") for i in range(1, keep + 1)]


def _shift(path: Path, keep: int) -> None:
    """events.jsonl.{keep} is deleted, each .i becomes .i+1, the file becomes .1 (blocking: a thread)."""
    olds = rotated_paths(path, keep)
    with contextlib.suppress(FileNotFoundError):
        olds[-1].unlink()
    for i in range(len(olds) - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            olds[i - 1].rename(olds[i])
    with contextlib.suppress(FileNotFoundError):  # moved meanwhile by an outside logrotate: nothing to do
        path.rename(olds[0])


class RotatingFile:
    """Appends batches of lines to `path`; past `max_bytes` (0 = never) the file is rotated first."""

    def __init__(self, path: Path, *, max_bytes: int = 0, keep: int = 5) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = max(keep, 1)
        self.size = 0
        self.rotations = 0
        self._file: Any = None
        self._reopen = False

    async def open(self) -> None:
        self._file = await aiofiles.open(self.path, "ab")
        self.size = os.fstat(self._file.fileno()).st_size

    def request_reopen(self) -> None:
        """Reopen the path before the next write (logrotate renamed the file, then sent SIGHUP)."""
        self._reopen = True

    async def write(self, data: bytes) -> None:
        """Append `data` (whole lines), rotating or reopening first if due; raises OSError as a file does."""
        if self._reopen or self._file is None:
            self._reopen = False
            await self._close()
            await self.open()
        elif self.max_bytes and self.size and self.size + len(data) > self.max_bytes:
            await self._close()
            try:
                await asyncio.to_thread(_shift, self.path, self.keep)
                self.rotations += 1
            except OSError as e:  # a read-only folder, say: keep appending rather than lose events
                log.warning("cannot rotate %s (%s); appending to it", self.path, e.strerror)
            await self.open()
        await self._file.write(data)
        self.size += len(data)

    async def flush(self) -> None:
        if self._file is not None:
            await self._file.flush()

    async def close(self) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            await f.close()
