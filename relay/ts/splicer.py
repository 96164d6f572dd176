"""The seamless splice: one output program for a channel session, across its upstreams. Sans-IO.

It never touches a socket, an event loop or a clock: time comes in as ``now`` (seconds, any monotonic
origin), so every rule is a unit test. Names follow ISO/IEC 13818-1. The ``Splicer`` coordinates one
object a concern and states each rule where it lives:

    relay/ts/program.py      output PIDs, PAT/PMT and version, the upstream's PSI (``OutputProgram``)
    relay/ts/continuity.py   continuity_counter across switches (``Continuity``)
    relay/ts/timeline.py     one timeline, rebase mod 2^33, discontinuity_indicator (``Timeline``)
    relay/ts/hold.py         PES hold, the lag, send-ahead, the switch's drop (``Hold``, ``Lag``)
    relay/ts/fastpath.py     a read handled column-wise, in place (``columns``, ``settle``)
    relay/ts/pes.py, psi.py, packet.py, aligner.py   the formats

This module keeps the per-packet path (what the columns cannot settle: PES starts, PCRs, PSI, unknown
PIDs) and the clean entry, the bridge, NoVideo and the join prefix. It is over 400 lines because the
public API's docstrings are the contract the session (relay/shell/session.py) is written against.

Public API
----------
``Splicer(keyframe_wait_s=1.0, no_video_s=3.0, enabled=True)``, one per channel session; it owns the
output program the client sees:
    ``feed(packets, now) -> list[bytes | memoryview]``: aligned packets of the current upstream in,
    packets ready to write out (empty while waiting for PSI or a keyframe, or while holding a PES).
    The returned views stay valid; nothing is written into the caller's buffers.
    ``switch(now)``: the next packets fed come from a new upstream (failover or upgrade). The current
    unfinished PES of each stream is dropped; the rest goes out with the next ``feed``/``bridge``.
    ``entered: bool``: the current upstream's clean entry is done (PAT+PMT then a keyframe went out);
    ``last_entry_wait_s``: how long that took. ``entry_sent``: that entry (PAT/PMT and the start of its
    keyframe, which then streams as it arrives) went out, which is when the session's switch time ends.
    ``poll(now)``: what trailed by the lag and fell due while the upstream was silent.
    ``bridge(now) -> bytes``: null packets (plus PAT/PMT every ``bridge_psi_interval_s``) to keep a
    client's demuxer fed during a gap; b"" until the session's first real output.
    ``health(now) -> str | None``: ``"NoMedia"`` when no video or audio PES came for ``no_media_s``
    while packets flow; ``"NoVideo"`` when the program had video and the current upstream's video PID
    is silent for ``no_video_s`` while audio flows, or its PMT has no video stream (relay/ts/health.py).
    ``join_prefix()``, ``keyframe_offset(chunk)``: PAT/PMT and where to start for a joining client.
    ``slowness``: the current upstream's media time against wall time (``slowness.slow(now)``:
    StreamSlow), reset at each switch.
    ``enabled=False``: passthrough (alignment only) so the difference can be measured.

Theory of operation (what lives here)
-------------------------------------
- Clean entry: after a switch nothing goes out until the PMT is known and a video PES starts at a
  random-access point (random_access_indicator, or an H.264 IDR/SPS, HEVC IRAP/VPS/SPS, MPEG-2 sequence
  header/GOP/I-picture in its first packet). Our PAT and PMT go out right before it. After
  ``keyframe_wait_s`` from the upstream's first packet, any video PES start is accepted.
- In place: given ``region=(buf, start)`` the splice rewrites headers in the caller's buffer (the
  upstream's ReadBuffer, relay/core/buffers.py) instead of a copy.
- A PID outside the program (SDT, EIT, other services) becomes a null packet in place; null packets pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from relay.core.slowness import SlowMeter
from relay.ts import fastpath
from relay.ts.continuity import Continuity
from relay.ts.fastpath import Tables, build_tables
from relay.ts.health import content_health
from relay.ts.hold import Hold, Lag
from relay.ts.packet import NULL_PACKET, NULL_PID, PAT_PID, TS_PACKET_SIZE, payload_offset
from relay.ts.pes import is_random_access, pes_timestamps
from relay.ts.program import KEEP, RESTART, OutputProgram, Route, Transcodable, UpstreamState, first_types
from relay.ts.timeline import Timeline

_PKT = TS_PACKET_SIZE
STREAMED_FRAMES = 2  # after an entry: its frame and the next are let out as they arrive, not held


class Splicer:
    """Owns the output program of one channel session; see the module docstring for the rules."""

    def __init__(
        self,
        keyframe_wait_s: float = 1.0,
        no_video_s: float = 3.0,
        enabled: bool = True,
        no_media_s: float = 3.0,
        slow_window_s: float = 10.0,
        slow_ratio: float = 0.9,
        *,
        hold_max_s: float = 1.0,
        bridge_psi_interval_s: float = 0.5,
        bridge_null_packets: int = 7,
        early_after_s: float | None = 0.03,
        frame_hold: bool = True,
        lag_window_s: float = 30.0,
        lag_bytes_max: int = 2 << 20,
        transcodable: Transcodable | None = None,
    ) -> None:
        self.keyframe_wait_s = keyframe_wait_s
        self.no_video_s = no_video_s
        self.no_media_s = no_media_s
        # media time (the reference stream's DTS) against wall time: StreamSlow (relay/core/slowness.py)
        self.slowness = SlowMeter(slow_window_s, slow_ratio)
        self.enabled = enabled
        self.bridge_psi_interval_s = bridge_psi_interval_s
        self.bridge_null_packets = bridge_null_packets
        self.frame_hold = frame_hold  # False: frames go out as they arrive; a cut one reaches the client
        # transcodable(output's (video, audio) stream types, upstream's) is True: an upstream whose
        # video or audio codec differs from the output's never enters (its bytes are to be re-encoded
        # to the output's codecs and fed as the next upstream); else the new codec gets its own PIDs
        self._continuity = Continuity()
        self._program = OutputProgram(self._continuity, transcodable)
        self._timeline = Timeline()
        # the output trails the upstream by the longest frame hold (in reads) of the last lag_window_s,
        # so that held frames come out at the pace they came in (never more than lag_bytes_max behind)
        self._lag = Lag(lag_window_s, lag_bytes_max)
        self._hold = Hold(self._continuity, self._lag, hold_max_s, early_after_s)
        self.dropped_packets = 0  # upstream packets not let through (entry, unfinished PES, foreign PIDs)
        self.switches = 0
        self.last_entry_wait_s: float | None = None
        self._src = UpstreamState()
        self._started = False
        self._last_bridge_psi: float | None = None
        self._chunks = 0  # serial number of the chunk being processed

    # --- settings kept by the concern objects --------------------------------------------------------

    @property
    def hold_max_s(self) -> float:
        return self._hold.hold_max_s

    @property
    def early_after_s(self) -> float | None:
        return self._hold.early_after_s

    @property
    def lag_window_s(self) -> float:
        return self._lag.lag_window_s

    @property
    def transcodable(self) -> Transcodable | None:
        return self._program.transcodable

    # --- public ---------------------------------------------------------------------------------------

    @property
    def entered(self) -> bool:
        """The current upstream's clean entry is done: from here on its packets go out."""
        return self._src.entered or not self.enabled

    @property
    def entry_sent(self) -> bool:
        """The current upstream's entry (PAT/PMT, then its keyframe's start) went out: the client has it."""
        entry = self._src.entry_index
        return not self.enabled or (entry is not None and self._hold.released > entry)

    @property
    def entry_streaming(self) -> bool:
        """The current upstream's entry frames are going out as they arrive (until the first held frame
        begins): what the splice lets out now is the client's first picture, not to be delayed."""
        src = self._src
        return self.enabled and src.entry_index is not None and src.streamed <= STREAMED_FRAMES

    @property
    def codec_change(self) -> bool:
        """The current upstream's codecs differ from the output's and it is held out (transcodable)."""
        return self._src.codec_change

    def output_types(self) -> tuple[int | None, int | None]:
        """stream_type of the output program's first video and first audio stream."""
        return first_types(self._program.pmt)

    def upstream_types(self) -> tuple[int | None, int | None]:
        """stream_type of the current upstream's first video and first audio stream."""
        return first_types(self._src.program)

    @property
    def pmt_version(self) -> int:
        return self._program.pmt_version

    @property
    def lag_s(self) -> float:
        """How far the output trails the upstream, so that frames held whole do not leave gaps."""
        return self._lag.lag_s

    def feed(
        self,
        packets: Sequence[bytes | bytearray | memoryview],
        now: float,
        region: tuple[bytearray, int] | None = None,
    ) -> list[bytes | memoryview]:
        """Take whole packets of the current upstream; return what is ready to write, in order.

        ``region=(buf, start)``: ``packets`` is the one view ``buf[start:start + len]`` and the caller
        hands those bytes over, so headers are rewritten in ``buf`` itself instead of in a copy.
        """
        if not self.enabled:
            out_pass: list[bytes | memoryview] = [
                p if isinstance(p, bytes | memoryview) else bytes(p) for p in packets
            ]
            self._started = self._started or any(len(p) for p in out_pass)
            return out_pass
        src = self._src
        if src.t0 is None:
            src.t0 = now
        if packets:
            src.fed_at = now
        out: list[bytes | memoryview] = []
        hold = self._hold
        hold.drain_ready(out)
        if packets:
            if region is not None and len(packets) == 1:
                buf, start = region
                stop = start + len(packets[0])
            else:
                buf, start = bytearray().join(packets), 0
                stop = len(buf)
            if (stop - start) % _PKT:
                raise ValueError("Splicer.feed takes whole 188-byte packets (use PacketAligner)")
            view = memoryview(buf)
            pos: int | None = start
            while pos is not None and pos < stop:
                pos = self._chunk(buf, view, pos, stop, now)
            if self.frame_hold:
                self._lag.read(hold.out_next, now)
        hold.release(out, self._src.routes.values(), now, self._program.pmt_pid)
        if out:
            self._started = True
        return out

    def poll(self, now: float) -> list[bytes | memoryview]:
        """What became due without new input (the lag ran out while the upstream was silent)."""
        out: list[bytes | memoryview] = []
        if self.enabled and self._src.t0 is not None:
            hold = self._hold
            hold.drain_ready(out)
            hold.release(out, self._src.routes.values(), now, self._program.pmt_pid, polled=True)
        return out

    def switch(self, now: float) -> None:
        """The next packets fed come from another upstream: drop unfinished PES, expect a clean entry."""
        self.switches += 1
        if not self.enabled:
            return
        self._finish_upstream()
        self._src = UpstreamState()
        self.slowness.reset()
        # the new upstream's entry keyframe streams as it arrives; the lag is learned again from this
        # upstream's frames, one read at a time (relay/ts/hold.py, "Lag")
        self._lag.restart()

    def join_prefix(self) -> bytes:
        """PAT and PMT for a client joining mid-stream.

        Each packet repeats the last continuity_counter sent on its PID: the joiner's first packet on
        that PID (any value is accepted there), and the next regular one continues it. b"" until there
        is an output program, and in passthrough mode (the joiner then waits for the stream's own PSI).
        """
        program = self._program
        if not self.enabled or not program.pat_packets or not self._started:
            return b""
        repeat = self._continuity.repeat_last
        return b"".join(repeat(p) for p in (*program.pat_packets, *program.pmt_packets))

    @property
    def video_stream(self) -> tuple[int, int] | None:
        """The output's video (PID, stream_type), for the joiners' GOP (relay/ts/gop.py); None in
        passthrough mode or without video."""
        video = self._program.video() if self.enabled else None
        return None if video is None else (video.elementary_PID, video.stream_type)

    @property
    def psi_pids(self) -> tuple[int, ...]:
        """The output's PAT and PMT PIDs."""
        pmt = self._program.pmt_pid
        return (PAT_PID,) if pmt is None else (PAT_PID, pmt)

    def keyframe_offset(self, data: bytes | bytearray | memoryview) -> int | None:
        """Byte offset in an output chunk of the first video packet a decoder can start from.

        A joining client is sent output from there on. None when the chunk has none (or, in
        passthrough mode or without video, the chunk's start: there is nothing better to wait for).
        """
        if not self.enabled or self._program.pmt is None:
            return 0
        video = self._program.video()
        if video is None:
            return 0
        pid, stype = video.elementary_PID, video.stream_type
        hi, lo = 0x40 | (pid >> 8), pid & 0xFF  # payload_unit_start_indicator set, on that PID
        for off in range(0, len(data) - _PKT + 1, _PKT):
            if data[off + 1] & 0x5F == hi and data[off + 2] == lo and is_random_access(data, off, stype):
                return off
        return None

    def bridge(self, now: float) -> bytes:
        """Packets that keep a client fed during a gap; b"" before the session's first real output."""
        if not self._started:
            return b""
        parts: list[bytes | memoryview] = []
        self._hold.drain_ready(parts)
        program = self._program
        if (
            self.enabled
            and program.pat_packets
            and (self._last_bridge_psi is None or now - self._last_bridge_psi >= self.bridge_psi_interval_s)
            and not self._continuity.native_pending  # their counters are fixed: keep order
        ):
            self._last_bridge_psi = now
            stamp = self._continuity.stamp
            for p in (*program.pat_packets, *program.pmt_packets):
                parts.append(stamp(bytearray(p)))
        parts.append(NULL_PACKET * self.bridge_null_packets)
        return b"".join(parts)

    def health(self, now: float) -> str | None:
        """``"NoMedia"`` or ``"NoVideo"`` for the current upstream's content (relay/ts/health.py)."""
        if not self.enabled:
            return None
        return content_health(self._src, now, self.no_video_s, self.no_media_s, self._program.had_video)

    # --- switch ---------------------------------------------------------------------------------------

    def _finish_upstream(self) -> None:
        """At a switch: drop each stream's unfinished PES, fix CC and timeline carry-over."""
        src = self._src
        dropping, dropped = self._hold.cut(src.routes.values())
        self.dropped_packets += dropped
        entered = [route for route in src.routes.values() if route.entered]
        for route in entered:
            o = route.out
            unfinished = o.pid in dropping
            Continuity.carry_over(o, unfinished)
            if unfinished:
                Timeline.drop_pes(o)
        self._timeline.finish(((route.is_ref, route.out) for route in entered), src.entered)

    # --- per chunk ------------------------------------------------------------------------------------

    def _chunk(self, whole: bytearray, view: memoryview, base: int, size: int, now: float) -> int | None:
        """Process whole packets from ``base`` in place; return where to go on when the routes changed.

        An entered upstream's packets go through the fast path's columns; the packets they cannot settle
        (and all of them before the entry) go through ``_packet`` one by one. Our inserted PSI and the
        cuts around dropped packets split the chunk into held segments.
        """
        buf = view[base:size]
        n = (size - base) // _PKT
        self._chunks += 1
        b1 = bytes(whole[base + 1 : size : _PKT])
        b2 = bytes(whole[base + 2 : size : _PKT])
        b3 = bytes(whole[base + 3 : size : _PKT])
        src = self._src
        tables: Tables | None = None
        positions: Iterable[int]
        if src.entered:
            program = self._program
            tables = src.tables or build_tables(src, program.pat_packets, program.pmt_packets)
            src.tables = tables
            timeline = self._timeline
            rebase = bool(timeline.offset or timeline.pending_di)
            positions, cls, new_b3, psi_stop = fastpath.columns(whole, base, size, b1, b2, b3, tables, rebase)
        else:
            positions = range(n)
            cls = new_b3 = b""
            psi_stop: dict[int, int] = {}

        hold = self._hold
        held = hold.held
        out_next = hold.out_next
        packet = self._packet
        seg_start = 0
        insert: list[bytearray] = []
        end = n
        restart = False
        for i in positions:
            r = packet(buf, i * _PKT, b1[i], b2[i], b3[i], out_next + i - seg_start, now, insert)
            if insert or not r & KEEP:
                if i > seg_start:
                    held.append((out_next, buf[seg_start * _PKT : i * _PKT]))
                    out_next += i - seg_start
                for p in insert:
                    held.append((out_next, p))
                    out_next += 1
                insert.clear()
                seg_start = i if r & KEEP else i + 1
                if not r & KEEP:
                    self.dropped_packets += 1
            if r & RESTART:
                end = i + 1
                restart = True
                break
        if end > seg_start:
            held.append((out_next, buf[seg_start * _PKT : end * _PKT]))
            out_next += end - seg_start
        hold.out_next = out_next
        if tables is not None:
            fastpath.settle(
                tables, buf, cls, b3, new_b3, end, out_next, psi_stop, self._chunks, self._continuity
            )
        if not restart or end >= n:
            return None
        rest = base + end * _PKT
        if tables is not None and not tables.identity:  # undo the column rewrite of the rest
            fastpath.undo(whole, rest, size, b1, b2, b3, end)
        return rest

    def _packet(
        self,
        buf: memoryview,
        off: int,
        h1: int,
        h2: int,
        h3: int,
        out_index: int,
        now: float,
        insert: list[bytearray],
    ) -> int:
        """One packet that the column pass cannot settle; rewrites it in place, returns KEEP/RESTART."""
        src = self._src
        pid = ((h1 & 0x1F) << 8) | h2
        if pid == PAT_PID:
            return self._program.on_pat(src, buf[off : off + _PKT], out_index, insert)
        if pid == src.pmt_pid:
            return self._program.on_pmt(src, buf[off : off + _PKT], out_index, insert)
        route = src.routes.get(pid)
        if route is None:
            if not src.entered:
                return 0
            if pid != NULL_PID:  # a PID outside the program (SDT, EIT, another service): make it a null
                buf[off + 1], buf[off + 2], buf[off + 3] = 0x1F, 0xFF, 0x10  # packet, in place
                self.dropped_packets += 1
            return KEEP
        kind = route.kind
        pusi = h1 & 0x40
        if pusi:
            if kind == "video":
                src.video_seen = now
            elif kind == "audio":
                src.audio_seen = now
        result = KEEP
        o = route.out
        if not route.entered:
            if kind == "pcr":
                if not src.entered:
                    return 0
            elif not pusi or not self._enter(src, route, buf, off, now, insert):
                return 0
            if src.entry_index is None and src.entered:
                src.entry_index = out_index + len(insert)  # the keyframe, after our PAT/PMT
            route.cc_delta = Continuity.entry_delta(o.next_cc, h3)
            route.entered = True
            src.tables = None
            result |= RESTART
        cc = ((h3 & 0x0F) + route.cc_delta) & 0x0F
        out_pid = o.pid
        buf[off + 1] = (h1 & 0xE0) | (out_pid >> 8)
        buf[off + 2] = out_pid & 0xFF
        buf[off + 3] = (h3 & 0xF0) | cc
        o.last_cc = cc
        timeline = self._timeline
        if (
            (timeline.offset or timeline.pending_di)
            and h3 & 0x20
            and buf[off + 4] >= 7
            and buf[off + 5] & 0x10
        ):
            timeline.rebase_pcr(buf, off)
        if pusi and kind != "pcr":
            self._pes_start(route, buf, off, cc, out_index + len(insert), now)
        elif o.pes_remaining > 0 and h3 & 0x10 and src.tables is None:  # else fastpath.count_pes does it
            o.pes_remaining -= _PKT - (5 + buf[off + 4] if h3 & 0x20 else 4)
            if o.pes_remaining <= 0:
                o.pes_start = None
                o.pes_remaining = -1
        return result

    def _enter(
        self,
        src: UpstreamState,
        route: Route,
        buf: memoryview,
        off: int,
        now: float,
        insert: list[bytearray],
    ) -> bool:
        """Decide whether this PES start is where a stream of the new upstream enters the output."""
        p = payload_offset(buf, off)
        pts, dts = pes_timestamps(buf, off, p)
        if not src.entered:
            if not route.is_ref or pts is None:
                return False
            if (
                route.kind == "video"
                and not is_random_access(buf, off, route.stream_type, p)
                and now - (src.t0 if src.t0 is not None else now) < self.keyframe_wait_s
            ):
                return False
            self._timeline.enter(dts if dts is not None else pts)
            insert.extend(self._program.publish(src))
            self._program.adopt_psi(src)
            src.entered = True
            self.last_entry_wait_s = now - (src.t0 if src.t0 is not None else now)
            return True
        return self._timeline.may_enter(route.out, pts)

    def _pes_start(
        self, route: Route, buf: memoryview, off: int, cc: int, out_index: int, now: float
    ) -> None:
        """A PES begins: rebase its PTS/DTS, learn the frame duration, start holding it."""
        p = payload_offset(buf, off)
        pts, dts = pes_timestamps(buf, off, p)
        if route.is_ref and pts is not None:
            self.slowness.sample(now, dts if dts is not None else pts)  # the upstream's own clock
        self._timeline.pes_start(route.out, buf, off + p, pts, dts)
        if route.kind not in ("video", "audio") or not self.frame_hold:
            return
        # the entry frame (after a switch, or at tune) streams as it arrives: the hold is for the dying
        # upstream's cut frame, and holding the new one whole only delays the first picture
        # (and the frame after it: its start is what tells a demuxer that the entry frame is complete)
        src = self._src
        stream = route.kind == "video" and src.entry_index is not None and src.streamed < STREAMED_FRAMES
        if stream or (route.kind == "video" and src.streamed == STREAMED_FRAMES):
            src.streamed += 1  # STREAMED_FRAMES + 1: the first held frame began, the entry is over
        self._hold.start_pes(route, src, buf, off, p, cc, out_index, now, self._chunks, stream=stream)
