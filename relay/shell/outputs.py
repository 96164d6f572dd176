"""A channel session's viewers: the fan-out of what it relays, joiners, and dropping the slow.

What goes out goes to every viewer as one chunk per upstream read, by reference and framed once
(`http11.chunk`) whatever the number of viewers: no per-viewer copy, no per-viewer framing. A viewer
that joins a running stream gets the response head and the splice's PAT/PMT at once, then starts at
the first keyframe of the video (without the splice: from the last read, whole packets, as a fresh
upstream would start mid-GOP). A viewer whose write buffer falls more than `client_buffer_bytes`
behind is dropped, with an event, so it never slows the others; one that stays paused (reads
nothing) for `client_stall_s` is dropped too, so it cannot hold a provider slot forever.

With `server.write_interval_ms` > 0 the reads are gathered first (relay/shell/coalesce.py) and go
out as one chunk per interval (or per `server.write_coalesce_bytes`): fewer writes per viewer.

Must never: copy or re-frame per viewer, block, or let one viewer hold back the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Protocol

from relay.core import events, http11
from relay.core.flow import FlowControl
from relay.shell.coalesce import Coalescer
from relay.ts import Splicer


class Output(Protocol):
    """A viewer of a session, as the session sees it (relay/shell/server.py's stream response)."""

    peer: str

    def buffered(self) -> int: ...
    def start_stream(self) -> None: ...
    def send(
        self, views: list[bytes | memoryview], size: int, framed: list[http11.Buffer] | None = None
    ) -> None: ...
    def unavailable(self) -> None: ...
    def abort(self) -> None: ...
    def finish(self) -> None: ...


class Outputs:
    """The viewers of one session. `flow` pauses the upstream while any of them is paused.

    `on_drop(out, reason)` is how a dropped viewer leaves (the session's `remove_output`, which may
    start the linger); `emit` records the client_dropped event.
    """

    def __init__(
        self,
        channel: str,
        splicer: Splicer,
        flow: FlowControl,
        loop: asyncio.AbstractEventLoop,
        *,
        buffer_limit: int,
        stall_s: float,
        emit: Callable[[events.Event], object],
        on_drop: Callable[[Output, str], None],
        write_interval_s: float = 0.0,
        write_bytes: int = 64 << 10,
    ) -> None:
        self.channel = channel
        self.viewers: list[Output] = []
        self.flow = flow
        self.started = False  # the response head went out: a joiner gets it at once
        self.bytes_out = 0  # once per read, not per viewer
        self._splicer = splicer
        self._loop = loop
        self._limit = buffer_limit
        self._stall_s = stall_s
        self._emit = emit
        self._on_drop = on_drop
        self._joining: set[int] = set()  # viewers waiting for a keyframe to start
        # without the splice: the last read sent, so a joiner starts from it at once (as a fresh
        # upstream would start mid-GOP) instead of waiting for the next read
        self._recent: tuple[list[bytes | memoryview], int] | None = None
        self._stalls: dict[int, asyncio.TimerHandle] = {}  # paused viewers: when they get dropped
        # gathers reads into one write per interval; None: a write per read
        self.coalescer = (
            Coalescer(loop, write_interval_s, write_bytes, self._fanout) if write_interval_s > 0 else None
        )

    def __iter__(self) -> Iterator[Output]:
        """The viewers now (a copy: removing one while iterating is safe)."""
        return iter(list(self.viewers))

    def __len__(self) -> int:
        return len(self.viewers)

    def __bool__(self) -> bool:
        return bool(self.viewers)

    def __contains__(self, out: object) -> bool:
        return out in self.viewers

    # ---- joining and leaving ----------------------------------------------------------------------

    def add(self, out: Output, gop: list[bytes | memoryview] | None = None) -> None:
        """A viewer joins; if the stream already runs: the head and PAT/PMT now, then the session's
        last GOP (`gop`, relay/ts/gop.py) and the live data, or without one from the next keyframe."""
        self.viewers.append(out)
        self.flow.add(id(out))
        if not self.started:
            return
        out.start_stream()
        if not self._splicer.enabled and self.coalescer is not None:
            self.coalescer.flush()  # `_recent` is then the last read, and nothing waits behind it
        if not self._splicer.enabled and self._recent is not None:
            out.send(*self._recent)  # whole packets: the demuxer waits for the stream's own PSI
            return
        intro = self._splicer.join_prefix()
        if intro:
            out.send([memoryview(intro)], len(intro))
        if intro and gop:  # issue 15, instant zap: the last GOP at once, then live
            out.send(gop, sum(len(g) for g in gop))
            return
        self._joining.add(id(out))

    def remove(self, out: Output) -> bool:
        """The viewer leaves; False if it was not one."""
        if out not in self.viewers:
            return False
        self.viewers.remove(out)
        self.flow.remove(id(out))
        self._joining.discard(id(out))
        self._cancel_stall(out)
        return True

    def start(self) -> None:
        """The stream begins: every viewer gets the response head."""
        self.started = True
        for out in self.viewers:
            out.start_stream()

    def take_all(self) -> list[Output]:
        """The session ends: every viewer, no longer one (the caller finishes or aborts them)."""
        self.flush()
        outs, self.viewers = self.viewers, []
        self._joining.clear()
        return outs

    def close(self) -> None:
        if self.coalescer is not None:
            self.coalescer.flush()  # the viewers still here get what was gathered
            self.coalescer.close()
        for timer in self._stalls.values():
            timer.cancel()
        self._stalls.clear()

    # ---- slow and stalled viewers -----------------------------------------------------------------

    def paused(self, out: Output) -> None:
        """The viewer's socket is over its high-water mark; it is dropped if it stays so `stall_s`."""
        self.flow.pause(id(out))
        if id(out) not in self._stalls:
            self._stalls[id(out)] = self._loop.call_later(self._stall_s, self._stalled, out)

    def resumed(self, out: Output) -> None:
        self.flow.resume(id(out))
        self._cancel_stall(out)

    def _cancel_stall(self, out: Output) -> None:
        timer = self._stalls.pop(id(out), None)
        if timer is not None:
            timer.cancel()

    def _stalled(self, out: Output) -> None:
        self._stalls.pop(id(out), None)
        if out in self.viewers:
            self.drop(out, out.buffered(), "ClientStalled")

    def drop(self, out: Output, size: int, reason: str = "SlowClient") -> None:
        """A viewer fell too far behind the others, or stopped reading: drop it, free what it holds."""
        self._emit(
            events.ClientDropped(channel=self.channel, peer=out.peer, reason=reason, buffered_bytes=size)
        )
        self._on_drop(out, reason)
        out.abort()

    # ---- the fan-out (the hot path) ---------------------------------------------------------------

    def write(self, views: list[bytes | memoryview]) -> None:
        """What the splice let go, to every viewer (gathered first when coalescing)."""
        size = sum(len(v) for v in views) if len(views) > 1 else len(views[0])
        self.bytes_out += size  # relayed now, whenever it goes out
        if self.coalescer is not None:
            self.coalescer.add(views, size)
        else:
            self._fanout(views, size)

    def flush(self) -> None:
        """What is gathered goes out now (a no-op without coalescing)."""
        if self.coalescer is not None:
            self.coalescer.flush()

    def _fanout(self, views: list[bytes | memoryview], size: int) -> None:
        """To every viewer: framed once, sent by reference."""
        limit = self._limit
        framed = http11.chunk(views, size)  # once per read, whatever the number of viewers
        if not self._splicer.enabled:
            self._recent = (views, size)
        viewers = self.viewers
        for out in viewers:
            if id(out) in self._joining:
                self._join(out, views)
                continue
            out.send(views, size, framed)
            # only a paused viewer (over the high-water mark) can be that far behind: ask only those
            if len(viewers) > 1 and self.flow.is_paused(id(out)) and out.buffered() > limit:
                self._loop.call_soon(self.drop, out, out.buffered())

    def _join(self, out: Output, views: list[bytes | memoryview]) -> None:
        """A joining viewer starts at the first keyframe of the video (PAT/PMT went out before)."""
        for i, v in enumerate(views):
            off = self._splicer.keyframe_offset(v)
            if off is not None:
                rest = [memoryview(v)[off:], *views[i + 1 :]]
                self._joining.discard(id(out))
                out.send(rest, sum(len(r) for r in rest))
                return

    def bridge(self, data: bytes) -> None:
        """Null packets (and PSI) over a gap, to every viewer already past its join."""
        self.flush()  # what came before the gap first
        for out in self.viewers:
            if id(out) not in self._joining:
                out.send([memoryview(data)], len(data))
