"""The output's one timeline: later upstreams rebased onto it, mod 2^33, with a discontinuity flag.

- The first upstream's timestamps pass unchanged. A later one is rebased so that its first video DTS
  lands one frame after the last output video DTS (mod 2^33); PCR, PTS and DTS all get the same
  offset, and the first PCR packet after a switch carries discontinuity_indicator.
- Other streams enter at their first PES whose rebased PTS is after their last output PTS, so each
  PID's timestamps stay monotonic (``may_enter``).
- If the reference stream (the first video, else the first audio) left nothing, the timeline goes on
  after the latest end of the other streams.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from relay.ts.pes import PTS_MODULUS, later, read_pcr_base, write_pcr_base, write_timestamp

if TYPE_CHECKING:
    from relay.ts.program import OutStream

DEFAULT_FRAME = 3600  # 90 kHz ticks of one 25 fps frame, until a stream shows its own
_MAX_STEP = 90000  # a step between PES starts longer than 1 s is a jump, not a frame


class Timeline:
    """Where the output's timeline ends, the current upstream's offset onto it, the pending flag."""

    __slots__ = ("end", "offset", "pending_di")

    def __init__(self) -> None:
        self.end: int | None = None  # the next frame's DTS after the last upstream (None: first upstream)
        self.offset = 0  # added to the current upstream's PTS/DTS/PCR, mod 2^33
        self.pending_di = False  # the next PCR packet gets discontinuity_indicator

    def enter(self, first: int) -> int:
        """The current upstream enters at DTS (or PTS) ``first``: fix its offset onto the timeline."""
        self.offset = 0 if self.end is None else (self.end - first) % PTS_MODULUS
        return self.offset

    def may_enter(self, out: OutStream, pts: int | None) -> bool:
        """Whether a PES at upstream ``pts`` starts after the end of the last one out on its output PID."""
        last = out.cur_pts
        if pts is None or last is None:
            return True
        # Not before the end of the last PES that went out on this PID: its start plus one PES step.
        end = (last + out.span) % PTS_MODULUS
        return not later(end, (pts + self.offset) % PTS_MODULUS)

    def rebase_pcr(self, b: bytearray | memoryview, off: int) -> None:
        """A PCR packet at ``off`` with program_clock_reference: rebase it, flag the first after a switch."""
        if self.offset:
            write_pcr_base(b, off + 6, (read_pcr_base(b, off + 6) + self.offset) % PTS_MODULUS)
        if self.pending_di:
            b[off + 5] |= 0x80
            self.pending_di = False

    def pes_start(
        self, out: OutStream, b: bytearray | memoryview, o: int, pts: int | None, dts: int | None
    ) -> None:
        """A PES header at ``o`` with these (upstream) timestamps: rebase them in place, learn the step."""
        if pts is None:
            return
        offset = self.offset
        if offset:
            pts = (pts + offset) % PTS_MODULUS
            write_timestamp(b, o + 9, pts)
            if dts is not None:
                dts = (dts + offset) % PTS_MODULUS
                write_timestamp(b, o + 14, dts)
        d = dts if dts is not None else pts
        if out.cur_dts is not None:
            step = (d - out.cur_dts) % PTS_MODULUS
            if 0 < step < _MAX_STEP:
                out.frame = step
                out.span = max(out.span, step)
        out.prev_pts, out.prev_dts = out.cur_pts, out.cur_dts
        out.cur_pts, out.cur_dts = pts, d

    @staticmethod
    def drop_pes(out: OutStream) -> None:
        """The stream's last PES is dropped at a switch: its timestamps are the previous one's."""
        out.cur_pts, out.cur_dts = out.prev_pts, out.prev_dts
        out.prev_pts = out.prev_dts = None

    def finish(self, streams: Iterable[tuple[bool, OutStream]], entered: bool) -> None:
        """At a switch: the timeline goes on one frame after the last reference DTS that went out.

        ``streams``: (is the reference stream, its output state) of each stream that entered.
        """
        ref_end: int | None = None  # the timeline continues one frame after the last reference DTS...
        ends: list[int] = []  # ...or, if the reference left nothing, after the latest other stream
        for is_ref, o in streams:
            if o.cur_dts is None:
                continue
            if is_ref:
                ref_end = (o.cur_dts + o.frame) % PTS_MODULUS
            else:
                ends.append((o.cur_dts + max(o.span, o.frame)) % PTS_MODULUS)
        if ref_end is not None:
            self.end = ref_end
        else:
            for end in ends:
                if self.end is None or later(end, self.end):
                    self.end = end
        if entered:
            self.pending_di = True
        self.offset = 0
