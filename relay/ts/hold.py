"""The held output: PES hold, the lag, send-ahead, and what a switch drops.

- Hold: output is released up to the earliest start of a PES that is not known to be complete (video:
  until its next PES starts, i.e. one frame; audio: until PES_packet_length bytes arrived). At a
  switch those unfinished PES are dropped (``cut``), so a frame cut by a dying upstream never reaches
  the client. A hold older than ``hold_max_s`` lapses, so a stuck PID cannot stall the output. A PES
  held longer than ``early_after_s`` (a large keyframe arriving at the stream's pace) stops holding
  the other PIDs: their packets behind it go out ahead of it, each PID in its own order
  (``_send_ahead``).
- Lag: a frame is let out only once complete, so a large keyframe arriving at the stream's pace would
  leave the client without bytes while it arrives (62 kB at 8 Mbit/s: ~60 ms). The output therefore
  trails the upstream by the longest frame hold seen in the last ``lag_window_s``, counted in reads
  plus one spare (at most ``lag_bytes_max``): each read lets out the read that many reads before it,
  so bytes leave at the pace they came. Counting reads, not seconds, matters: compared at jittery read
  times, a lag in seconds lets out nothing at one read and two at the next, doubling a gap. After a
  switch (and at tune) the lag starts at zero and the entry keyframe and the frame after it are not
  held: they stream as they arrive (``start_pes(stream=True)``), so the first picture costs what a
  direct reconnect costs; their arrival still teaches the lag, which is then grown a read at a time
  (``RAMP_READS``: gaps of two reads, never one pause of the whole lag). ``Splicer.poll(now)`` lets
  out what trailed by the lag once the upstream went silent.
- An entry frame that streamed is not dropped at a switch: if a backup dies inside its first frame,
  the client has the start of that frame (one broken picture) and then the next upstream's entry.

The held output is a deque of (output index, segment): memoryviews of the upstream's reads (rewritten
in place) and our own PSI packets (bytearrays, numbered when they go out, relay/ts/continuity.py).
Over 400 lines because hold, lag and send-ahead share that one deque and its output indexes: apart,
each would need the others' bookkeeping.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterable

from relay.ts.continuity import Continuity
from relay.ts.packet import PAT_PID, TS_PACKET_SIZE, ones, pid_hi_table, pid_lo_table
from relay.ts.pes import is_random_access
from relay.ts.program import Route, UpstreamState

_PKT = TS_PACKET_SIZE
LAG_MIN_HOLD_S = 0.005  # a frame held for less than this leaves no gap worth a lag
# until a keyframe's hold was learned (an entry mid-GOP, after keyframe_wait_s), the lag is at least
# this: learned from small frames alone, the first keyframe would outgrow it and leave a gap
LAG_PRIOR_S = 0.1
# after a streamed entry frame the lag grows one read per this many reads, from the read after the one
# that taught it: the client gets gaps of two reads instead of one pause of the whole lag
RAMP_READS = 2

Segment = memoryview | bytearray


def runs_without(seg: memoryview, first: int, skip: Callable[[int, int], bool]) -> list[memoryview]:
    """The runs of ``seg``'s packets (output indexes from ``first``) between those ``skip(index, PID)``."""
    out: list[memoryview] = []
    run = 0
    for j in range(len(seg) // _PKT):
        o = j * _PKT
        if skip(first + j, ((seg[o + 1] & 0x1F) << 8) | seg[o + 2]):
            if j > run:
                out.append(seg[run * _PKT : o])
            run = j + 1
    if len(seg) > run * _PKT:
        out.append(seg[run * _PKT :])
    return out


class Lag:
    """How many reads the output trails the upstream by: learned from how long frames were held."""

    __slots__ = (
        "_arrivals",
        "_deferred",
        "_due",
        "_keep",
        "_lag_packets",
        "_last_feed",
        "_spans",
        "_step",
        "lag_window_s",
        "reads",
    )

    def __init__(self, lag_window_s: float = 30.0, lag_bytes_max: int = 2 << 20) -> None:
        self.lag_window_s = lag_window_s
        self._lag_packets = max(lag_bytes_max // _PKT, 1)
        self.reads = 0  # reads fed
        self._spans: deque[tuple[float, int]] = deque()  # (when, reads a frame was held) a sliding max
        self._arrivals: deque[tuple[int, float]] = deque()  # (held output index after a read, its time)
        self._due = 0  # held output before this index has waited out the lag
        self._step = 0.0  # average time between reads
        self._keep = 0  # the lag in reads
        self._last_feed: float | None = None
        # after a streamed entry: (the lag in reads it grows to, the read of its last step)
        self._deferred: tuple[int, int] | None = None

    @property
    def lag_s(self) -> float:
        """How far the output trails the upstream, so that frames held whole do not leave gaps."""
        return self._keep * self._step

    @property
    def keep(self) -> int:
        """The lag in reads."""
        return self._keep

    def read(self, out_next: int, now: float) -> None:
        """A read was fed: the held output now ends at ``out_next``."""
        self._arrivals.append((out_next, now))
        self.reads += 1
        if self._deferred is not None and self.reads >= self._deferred[1] + RAMP_READS:
            target = self._deferred[0]  # a read at a time: each step is one read with nothing out
            self._keep += 1
            self._deferred = (target, self.reads) if self._keep < target else None
        if self._last_feed is not None:
            gap = min(now - self._last_feed, 0.1)
            self._step = gap if self._step <= 0 else self._step + (gap - self._step) / 4
        self._last_feed = now

    def restart(self) -> None:
        """At a switch: the new upstream's frames teach the lag again, from zero."""
        self._keep = 0
        self._deferred = None
        self._spans.clear()

    def forget(self) -> None:
        """At a switch: the held output is gone (out or dropped); its reads are forgotten."""
        self._arrivals.clear()

    def _keep_reads(self, now: float, polled: bool) -> int:
        """How many of the latest reads stay held: the lag, counted in reads.

        Output leaves when reads come, so the lag is kept as a number of reads (one in, one out):
        a lag in seconds compared at jittery read times would let out nothing at one read and two at
        the next, doubling a gap. ``polled``: no read came for longer than the lag (a silent
        upstream), so what is older than the lag goes.
        """
        if polled:
            last = self._last_feed if self._last_feed is not None else now
            lag = self.lag_s
            if now - last <= max(lag, 2 * self._step):
                return len(self._arrivals)  # reads still come: they let the output out
            return sum(1 for _, when in self._arrivals if when > now - lag)
        return self._keep

    def due_limit(self, now: float, done: int, out_next: int, polled: bool = False) -> int:
        """Held output before this index has trailed its read by the lag (or by lag_bytes_max).

        A read is forgotten only once released whole (up to ``done``, where the frame hold ends): the
        reads of a frame still arriving keep their places, so when its completion teaches a longer
        lag, they leave at their own pace, not in a burst.
        """
        arrivals = self._arrivals
        keep, floor = self._keep_reads(now, polled), out_next - self._lag_packets
        while arrivals and (len(arrivals) > keep or arrivals[0][0] <= floor):
            end = arrivals[0][0]
            if end > done:
                return end
            self._due = end
            arrivals.popleft()
        return self._due if arrivals else out_next

    def due_after(self, out_next: int) -> int:
        """How far the held output is due, past a frame still held (what send-ahead may look at)."""
        arrivals = self._arrivals
        keep, floor = self._keep, out_next - self._lag_packets
        upto = self._due
        for k, (end, _) in enumerate(arrivals):
            if len(arrivals) - k <= keep and end > floor:
                return upto
            upto = end
        return out_next

    def learn(self, reads: int, now: float, keyframe_held: bool, defer: bool = False) -> None:
        """A frame was held for ``reads`` reads before it was complete: keep that many reads back.

        Held frames then leave at the pace they arrived instead of in a burst after a gap (a 62 kB
        keyframe at 8 Mbit/s takes ~60 ms to arrive; a frame hold without lag leaves the client
        without bytes for that long). Counted in reads, with one to spare: each step up is itself
        one read with nothing to let out, so it steps up only for a frame the count did not cover.
        ``keyframe_held``: a keyframe's hold was learned already (else LAG_PRIOR_S is the floor).
        ``defer``: the frame streamed (an entry): a longer lag is reached a read at a time
        (``RAMP_READS``), from the read after this one, so the read that completes the entry frame goes
        out at once and learning the lag leaves no long gap; what is learned meanwhile joins the ramp.
        """
        spans = self._spans
        while spans and spans[-1][1] <= reads:
            spans.pop()
        spans.append((now, reads))
        while spans[0][0] < now - self.lag_window_s:
            spans.popleft()
        need = spans[0][1]  # a frame held for this many reads leaves no gap when keep >= need
        if not keyframe_held and self._step > 0:
            need = max(need, math.ceil(LAG_PRIOR_S / self._step) - 1)
        if need > self._keep or need + 2 < self._keep:
            keep = need + 1 if need else 0
            if (defer or self._deferred is not None) and keep > self._keep:
                self._deferred = (keep, self._deferred[1] if self._deferred else self.reads)
            else:
                self._keep = keep
                self._deferred = None


class Hold:
    """The output held back until each PES in it is known to be complete and the lag let it out."""

    __slots__ = (
        "_continuity",
        "_early_next",
        "_early_stuck",
        "_moved",
        "_ready",
        "early_after_s",
        "held",
        "hold_max_s",
        "lag",
        "out_next",
        "released",
    )

    def __init__(
        self, continuity: Continuity, lag: Lag, hold_max_s: float = 1.0, early_after_s: float | None = 0.03
    ) -> None:
        self._continuity = continuity
        self.lag = lag
        self.hold_max_s = hold_max_s
        # a PES held longer than this (a large keyframe arriving at the stream's pace) no longer holds
        # the other PIDs: their packets behind it go out ahead of it; None: strict order
        self.early_after_s = early_after_s
        self.held: deque[tuple[int, Segment]] = deque()
        self.out_next = 0  # output index of the next packet put in the held output
        self.released = 0  # output before this index went out
        self._ready: list[bytes | memoryview] = []  # due at once (the old upstream's, at a switch)
        self._moved: set[int] = set()  # output indexes of held packets already sent ahead
        self._early_next = 0  # held packets from this index on were not looked at yet
        self._early_stuck: set[int] = set()  # PIDs with a packet that must wait: later ones wait too

    def drain_ready(self, out: list[bytes | memoryview]) -> None:
        """What a switch let out goes first."""
        out += self._ready
        self._ready.clear()

    def start_pes(
        self,
        route: Route,
        src: UpstreamState,
        b: memoryview,
        off: int,
        p: int,
        cc: int,
        out_index: int,
        now: float,
        chunk: int,
        stream: bool = False,
    ) -> None:
        """A video or audio PES begins at output ``out_index``: hold it; a video one ends the one before.

        ``stream``: an entry frame, let out as it arrives; its arrival is still learned by the lag.
        """
        o = route.out
        if route.kind == "video":
            if o.pes_start is not None or o.pes_streamed:  # the frame before this one is complete
                lag = self.lag
                held = now - o.pes_start_time >= LAG_MIN_HOLD_S  # a burst of reads: no one waited
                src.keyframe_held = src.keyframe_held or o.pes_key
                reads = lag.reads - o.pes_start_read if held else 0
                lag.learn(reads, now, src.keyframe_held, defer=o.pes_streamed)
            o.pes_key = not src.keyframe_held and is_random_access(b, off, route.stream_type, p)
        o.pes_start = None if stream else out_index
        o.pes_streamed = stream
        o.pes_start_time = now
        o.pes_start_read = self.lag.reads
        o.pes_cc = cc
        o.pes_remaining = -1
        o.pes_chunk = chunk
        o.pes_index = off // _PKT
        if route.kind == "audio" and p + 6 <= _PKT:
            length = (b[off + p + 4] << 8) | b[off + p + 5]
            if length:
                o.pes_remaining = length + 6 - (_PKT - p)
                if o.pes_remaining <= 0:
                    o.pes_start = None
                    o.pes_remaining = -1

    def release(
        self,
        out: list[bytes | memoryview],
        routes: Collection[Route],
        now: float,
        pmt_pid: int | None,
        polled: bool = False,
    ) -> None:
        """Emit held output up to the earliest start of a PES not known to be complete, once due.

        A hold older than hold_max_s ends, but only while packets flow (not ``polled``): when nothing
        arrives, the upstream may have died mid-frame, and the switch drops that frame.
        """
        limit = self.out_next
        since = now
        for route in routes:
            o = route.out
            if o.pes_start is not None and route.entered:
                if not polled and now - o.pes_start_time > self.hold_max_s:
                    o.pes_start = None  # a stuck PID must not stall the program
                elif o.pes_start < limit:
                    limit, since = o.pes_start, o.pes_start_time
        frames_done = limit
        lag = self.lag
        due = lag.due_limit(now, frames_done, self.out_next, polled)
        limit = min(limit, due)
        held = self.held
        settle_to = self._continuity.settle_to
        stamp = self._continuity.stamp
        while held and held[0][0] < limit:
            idx, seg = held[0]
            if isinstance(seg, bytearray):
                settle_to(idx)
                out.append(bytes(stamp(seg)))
                held.popleft()
                continue
            count = len(seg) // _PKT
            if idx + count <= limit:
                settle_to(idx + count)
                self._emit(out, idx, seg)
                held.popleft()
            else:
                k = limit - idx
                settle_to(limit)
                self._emit(out, idx, seg[: k * _PKT])
                held[0] = (limit, seg[k * _PKT :])
                break
        settle_to(limit)
        self.released = max(self.released, limit)
        if not held or limit >= self._early_next:
            self._early_next = limit  # a new hold (or none): nothing behind it was looked at
            self._early_stuck.clear()
        if (
            held
            and self.early_after_s is not None
            and frames_done < due
            and now - since >= lag.lag_s + self.early_after_s
        ):
            holding = {route.out.pid for route in routes if route.entered and route.out.pes_start is not None}
            self._send_ahead(out, lag.due_after(self.out_next), holding, pmt_pid)

    def _emit(self, out: list[bytes | memoryview], idx: int, seg: memoryview) -> None:
        """Out goes a held segment, but for the packets already sent ahead of it."""
        moved = self._moved
        if not moved:
            out.append(seg)
            return
        out += runs_without(seg, idx, lambda i, _pid: i in moved)
        moved.difference_update(range(idx, idx + len(seg) // _PKT))

    def _send_ahead(
        self, out: list[bytes | memoryview], upto: int, holding: set[int], pmt_pid: int | None
    ) -> None:
        """A PES held for long: send the other PIDs' packets behind it now, in their own order.

        A large keyframe arrives at the stream's pace (~60 ms for 60 kB at 8 Mbit/s) and is held
        whole; audio, null and PCR packets that arrived meanwhile go out at once instead of waiting
        with it, so the client keeps receiving. Packets of a PID still holding a PES of its own
        (``holding``) wait, and so does everything after them on that PID (per-PID order is kept);
        PSI and our inserted packets keep their place.
        """
        stuck = self._early_stuck
        stuck.update(holding, (PAT_PID, pmt_pid or PAT_PID))
        moved = self._moved
        picked: list[memoryview] = []
        first = self._early_next
        for idx, seg in self.held:
            if idx >= upto:
                break
            if isinstance(seg, bytearray):
                continue
            count = min(len(seg) // _PKT, upto - idx)
            if idx + count <= first:
                continue
            skip = max(first - idx, 0)
            part = seg[skip * _PKT : count * _PKT]
            n = count - skip
            hi, lo = bytes(part[1::_PKT]), bytes(part[2::_PKT])
            waits = 0
            for pid in stuck:
                h = int.from_bytes(hi.translate(pid_hi_table(pid >> 8)), "little")
                waits |= h & int.from_bytes(lo.translate(pid_lo_table(pid & 0xFF)), "little")
            run = 0
            for j in [*ones(waits.to_bytes(n, "little")), n]:  # runs between the packets that wait
                if j > run:
                    picked.append(part[run * _PKT : j * _PKT])
                    moved.update(range(idx + skip + run, idx + skip + j))
                run = j + 1
        self._early_next = max(first, upto)
        if picked:
            out.append(b"".join(picked))  # a copy: these bytes also stay in the held segments, skipped

    def cut(self, routes: Iterable[Route]) -> tuple[set[int], int]:
        """At a switch: let out all held output but each stream's unfinished PES.

        Returns the output PIDs whose unfinished PES was dropped and how many packets were dropped.
        Unfinished, however old: after a stall the switch comes stall_timeout_s later, and the PES the
        dead upstream left half-sent must not reach the client (a hold that lapsed while the stream
        flowed has no pes_start any more).
        """
        entered = [route.out for route in routes if route.entered]
        dropping = {o.pid: o.pes_start for o in entered if o.pes_start is not None}
        moved = self._moved
        dropped = 0

        def gone(i: int, pid: int) -> bool:
            nonlocal dropped
            if i in moved:
                return True  # sent ahead already
            start = dropping.get(pid)
            if start is None or i < start:
                return False
            dropped += 1  # the dead upstream's unfinished PES
            return True

        continuity = self._continuity
        for idx, seg in self.held:
            if isinstance(seg, bytearray):
                continuity.settle_to(idx)
                self._ready.append(bytes(continuity.stamp(seg)))
                continue
            continuity.settle_to(idx + len(seg) // _PKT)
            if not (dropping or moved):
                self._ready.append(seg)
            else:
                self._ready += runs_without(seg, idx, gone)
        continuity.settle_to(self.out_next)
        self.held.clear()
        self.lag.forget()
        moved.clear()
        self._early_stuck.clear()
        self._early_next = self.out_next
        for o in entered:
            o.pes_start = None
            o.pes_streamed = False
            o.pes_remaining = -1
        return set(dropping), dropped
