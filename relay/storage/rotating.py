"""The JSON-lines event file as an append-only file that rotates by size and reopens on request.

Rotation and reopening happen only between two writes, and a write is a whole batch of whole lines
(or nothing: a write cut short by a full disk is truncated away again), so every event is in exactly
one file: none is cut, lost or written twice across a rotation. `events.jsonl` is renamed to
`events.jsonl.1` (the older ones move up, beyond `keep` they are deleted), as logrotate would; a
reader that follows by name (`tail -F`, `relay events -f`) picks the new file up. `request_reopen`
(SIGHUP) is for an outside logrotate: the file it renamed is closed and a new one opened at the path
before the next write, so nothing is written to the old one after it. Blocking: the event log calls
it from its writer thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from relay.storage.files import create_private

log = logging.getLogger("relay.storage.rotating")


def rotated_paths(path: Path, keep: int) -> list[Path]:
    """events.jsonl.1 (newest) .. events.jsonl.{keep}."""
    return [path.with_name(f"{path.name}.{i}") for i in range(1, keep + 1)]


def _shift(path: Path, keep: int) -> None:
    """events.jsonl.{keep} is deleted, each .i becomes .i+1, the file becomes .1."""
    olds = rotated_paths(path, keep)
    with contextlib.suppress(FileNotFoundError):
        olds[-1].unlink()
    for i in range(len(olds) - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            olds[i - 1].rename(olds[i])
    with contextlib.suppress(FileNotFoundError):  # moved meanwhile by an outside logrotate: nothing to do
        path.rename(olds[0])


class RotatingFile:
    """Appends batches of lines to `path`; past `max_bytes` (0 = never) the file is rotated first.

    New files are created private (relay.storage.files: 0600, or 0640 for `gid`)."""

    def __init__(self, path: Path, *, max_bytes: int = 0, keep: int = 5, gid: int | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = max(keep, 1)
        self.gid = gid
        self.size = 0
        self.rotations = 0
        self._fd: int | None = None
        self._reopen = False

    def open(self) -> None:
        create_private(self.path, self.gid)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size

    def request_reopen(self) -> None:
        """Reopen the path before the next write (logrotate renamed the file, then sent SIGHUP)."""
        self._reopen = True

    def append(self, data: bytes) -> None:
        """Append `data` (whole lines) or nothing, rotating or reopening first if due; raises OSError."""
        if self._reopen or self._fd is None:
            self._reopen = False
            self.close()
            self.open()
        elif self.max_bytes and self.size and self.size + len(data) > self.max_bytes:
            self.close()
            try:
                _shift(self.path, self.keep)
                self.rotations += 1
            except OSError as e:  # a read-only folder, say: keep appending rather than lose events
                log.warning("cannot rotate %s (%s); appending to it", self.path, e.strerror)
            self.open()
        assert self._fd is not None
        view = memoryview(data)
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise
        self.size = start + len(data)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
