"""The page's live feed: server-sent events, pushed to every viewer from one place.

Nothing polls per viewer. Each event of the event log is sent as it is emitted (`event: event`),
and a status snapshot (`event: status`) is built once and written to every viewer: right after an
event (coalesced to one per loop iteration, so a failover shows at once) and every
`ui.status_interval_s` while anyone watches (uptime, bitrate, viewers change without an event). A
viewer is a connection the feed owns, like a stream client: it is its session's Output as far as
HttpProtocol knows (connection_lost calls `remove_output`), and one that stops reading is dropped
before its buffer grows past MAX_BUFFERED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from relay.core import http11
from relay.shell.server import HttpProtocol

MAX_BUFFERED = 1 << 20  # bytes a viewer may leave unread before it is dropped
HEAD = http11.head(
    200,
    [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Accel-Buffering", "no"),  # a reverse proxy in front must not hold the feed back
        ("Connection", "close"),
    ],
)
RETRY = b"retry: 2000\n\n"  # the browser reconnects after 2 s if the feed drops (a relay restart)


def frame(kind: str, data: Any) -> bytes:
    """One SSE message; JSON never holds a raw newline, so `data:` is a single line."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class LiveFeed:
    def __init__(
        self, snapshot: Callable[[bool], dict[str, Any]], interval_s: float, max_viewers: int
    ) -> None:
        self.snapshot = snapshot  # (with viewers' addresses?) -> the status the page shows
        self.interval_s = interval_s
        self.max_viewers = max_viewers
        self.viewers: dict[HttpProtocol, bool] = {}  # -> logged in (sees addresses)
        self._timer: asyncio.TimerHandle | None = None
        self._soon: asyncio.Handle | None = None
        self.pushed = 0  # status snapshots built (not per viewer)

    def add(self, proto: HttpProtocol, authed: bool) -> bool:
        """Take the connection over as a viewer; False if the feed is full."""
        if len(self.viewers) >= self.max_viewers or proto.transport is None:
            return False
        proto.streaming = True  # the connection now belongs to the feed
        proto.session = self  # type: ignore[assignment]  # duck-typed: remove_output, output_paused/resumed
        self.viewers[proto] = authed
        proto.respond(HEAD + RETRY + frame("status", self.snapshot(authed)))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)
        return True

    # ---- HttpProtocol's Output calls --------------------------------------------------------------

    def remove_output(self, proto: HttpProtocol, reason: str = "ClientGone") -> None:
        self.viewers.pop(proto, None)

    def output_paused(self, proto: HttpProtocol) -> None:
        pass  # the buffer check in _write drops a viewer that does not catch up

    def output_resumed(self, proto: HttpProtocol) -> None:
        pass

    # ---- what is pushed ---------------------------------------------------------------------------

    def on_event(self, e: dict[str, Any]) -> None:
        if not self.viewers:
            return
        self._write(frame("event", e))
        if self._soon is None:  # the state the event changed, once per loop iteration
            self._soon = asyncio.get_running_loop().call_soon(self._push_status)

    def push_sync(self, report: dict[str, Any]) -> None:
        if self.viewers:
            self._write(frame("sync", {"at": report.get("at"), "by": report.get("by")}))

    def _push_status(self) -> None:
        self._soon = None
        if not self.viewers:
            return
        kinds = set(self.viewers.values())
        frames = {authed: frame("status", self.snapshot(authed)) for authed in kinds}
        self.pushed += len(frames)
        for proto, authed in list(self.viewers.items()):
            self._write_one(proto, frames[authed])

    def _tick(self) -> None:
        self._timer = None
        if not self.viewers:
            return  # the next viewer restarts it
        self._push_status()
        self._timer = asyncio.get_running_loop().call_later(self.interval_s, self._tick)

    def _write(self, data: bytes) -> None:
        for proto in list(self.viewers):
            self._write_one(proto, data)

    def _write_one(self, proto: HttpProtocol, data: bytes) -> None:
        t = proto.transport
        if t is None:
            self.viewers.pop(proto, None)
            return
        if t.get_write_buffer_size() > MAX_BUFFERED:
            self.viewers.pop(proto, None)
            proto.session = None
            proto.close()
            return
        t.write(data)

    def close(self) -> None:
        for h in (self._timer, self._soon):
            if h is not None:
                h.cancel()
        self._timer = self._soon = None
        for proto in list(self.viewers):
            proto.session = None
            proto.close()
        self.viewers.clear()
