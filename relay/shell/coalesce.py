"""Fewer writes per viewer: what a channel's viewers are due, gathered and sent in one batch.

Without it every upstream read costs one `writelines` (and one syscall) per viewer. The Coalescer keeps
what the splice let go, in order and by reference, and hands it to the fan-out as one batch when
`server.write_interval_ms` has passed since the first byte of the batch or the batch reached
`server.write_coalesce_bytes`, whichever comes first (on a steady stream the batches keep one cadence,
so a viewer's gap is the interval, not the interval plus a read): one chunk framed once, one write per
viewer, for all the viewers of the channel in one pass. Back-pressure and the slow-viewer bound are the
fan-out's, checked at each batch as they were at each read. An interval of 0 turns it off (a write per
read, as before).

Must never: reorder, copy or drop bytes, or hold a batch past its interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Coalescer:
    """Gathers views; `send(views, size)` gets them as one batch (a timer per channel, not per viewer)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval_s: float,
        max_bytes: int,
        send: Callable[[list[bytes | memoryview], int], None],
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0 (0 means: no Coalescer)")
        self._loop = loop
        self._interval_s = interval_s
        self._max_bytes = max_bytes
        self._send = send
        self._views: list[bytes | memoryview] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0  # loop time of the next batch on the cadence of the last timed one
        self.batches = 0  # batches sent (for tests and the bench)

    @property
    def pending(self) -> int:
        """Bytes gathered and not sent yet."""
        return self._size

    def add(self, views: list[bytes | memoryview], size: int) -> None:
        """`size`: the bytes in `views`."""
        self._views.extend(views)
        self._size += size
        if self._size >= self._max_bytes:
            self.flush()
        elif self._timer is None:
            # on a steady stream the batches keep one cadence (a batch every interval, not every
            # interval after the first read that missed the last batch: that would add a read to the gap)
            now = self._loop.time()
            at = self._next if now < self._next else now + self._interval_s
            self._timer = self._loop.call_at(at, self._due)

    def _due(self) -> None:
        self._timer = None
        self._next = self._loop.time() + self._interval_s
        self.flush()

    def flush(self) -> None:
        """Send what is gathered now (a bridge, a joiner, the end of the session, a switch's entry)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._views:
            return
        views, size = self._views, self._size
        self._views, self._size = [], 0
        self.batches += 1
        self._send(views, size)

    def close(self) -> None:
        """The session ended: nothing more goes out (the caller flushed what it wanted to send)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._views, self._size = [], 0
