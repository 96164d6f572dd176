"""The output's one timeline: later upstreams rebased onto it, mod 2^33, with a discontinuity flag.

- The first upstream's timestamps pass unchanged. A later one is rebased so that its first video DTS
  lands one frame after the last output video DTS (mod 2^33); PCR, PTS and DTS all get the same
  offset, and the first PCR packet after a switch carries discontinuity_indicator.
- Other streams enter at their first PES whose rebased PTS is after their last output PTS, so each
  PID's timestamps stay monotonic (``may_enter``).
- If the reference stream (the first video, else the first audio) left nothing, the timeline goes on
  after the latest end of the other streams.
- A jump inside one upstream (an encoder restart, a provider looping a file: a PID's own timestamps
  step back by over 1 s, or forward by over ``JUMP_FORWARD``) is rebased like a switch, so the output
  clock never jumps. The first PID (or the PCR) that jumps opens a new *epoch*: its offset puts that
  PID's next timestamp one step after its last output one; every other PID, and the PCR, moves to the
  new epoch when its own timestamps jump (a muxer interleaves: audio of the old epoch may follow the
  new epoch's first video), so A/V stay as the encoder put them. The first PCR of the new epoch
  carries discontinuity_indicator.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from relay.ts.pes import PTS_MODULUS, later, read_pcr_base, write_pcr_base, write_timestamp

if TYPE_CHECKING:
    from relay.ts.program import OutStream

DEFAULT_FRAME = 3600  # 90 kHz ticks of one 25 fps frame, until a stream shows its own
_MAX_STEP = 90000  # a step between PES starts longer than 1 s is a jump, not a frame
JUMP_BACK = 90000  # a PID's timestamps stepping back by more than 1 s: a jump (not B-frame order)
JUMP_FORWARD = 10 * 90000  # ...or forward by more than 10 s (a long read of a low-rate stream is less)
_PCR_STEP = 900  # 10 ms: where a new epoch's first PCR lands after the last one, until one was seen


def jumped(new: int, old: int) -> bool:
    """The step from ``old`` to ``new`` (90 kHz, mod 2^33) is a jump in the upstream's clock."""
    step = (new - old) % PTS_MODULUS
    return step > JUMP_FORWARD and PTS_MODULUS - step > JUMP_BACK


class Timeline:
    """Where the output's timeline ends, the current upstream's offset onto it, the pending flag."""

    __slots__ = ("adjust", "end", "gen", "jumps", "offset", "pcr_epoch", "pcr_out", "pcr_step", "pcr_up",
                 "pending_di")  # fmt: skip

    def __init__(self) -> None:
        self.end: int | None = None  # the next frame's DTS after the last upstream (None: first upstream)
        self.offset = 0  # added to the current upstream's PTS/DTS/PCR, mod 2^33
        self.pending_di = False  # the next PCR packet gets discontinuity_indicator
        # jumps inside the current upstream: each epoch's offset on top of `offset`
        self.adjust: list[int] = [0]
        self.gen = 0  # bumped at every switch: a stream's epoch from an earlier upstream is void
        self.jumps = 0  # epochs opened, over the session
        self.pcr_epoch = 0
        self.pcr_up: int | None = None  # the upstream's last PCR base, and the output's
        self.pcr_out: int | None = None
        self.pcr_step = _PCR_STEP

    @property
    def rebasing(self) -> bool:
        """Timestamps are rewritten (a later upstream, or a jump inside this one) or a flag is due."""
        return bool(self.offset or self.pending_di or len(self.adjust) > 1)

    def _epoch_of(self, out: OutStream) -> int:
        if out.epoch_gen != self.gen:
            out.epoch_gen, out.epoch, out.up_dts = self.gen, 0, None
        return out.epoch

    def _next_epoch(self, current: int, adjust_for_new: int) -> int:
        """Move from epoch ``current`` to the next one, opening it (with this adjust) if it is new."""
        if current + 1 < len(self.adjust):
            return current + 1  # another PID jumped first: follow it
        self.adjust.append(adjust_for_new % PTS_MODULUS)
        self.jumps += 1
        return current + 1

    def enter(self, first: int) -> int:
        """The current upstream enters at DTS (or PTS) ``first``: fix its offset onto the timeline."""
        self.offset = 0 if self.end is None else (self.end - first) % PTS_MODULUS
        return self.offset

    def may_enter(self, out: OutStream, pts: int | None) -> bool:
        """Whether a PES at upstream ``pts`` starts after the end of the last one out on its output PID."""
        last = out.cur_pts
        if pts is None or last is None:
            return True
        self._epoch_of(out)
        # Not before the end of the last PES that went out on this PID: its start plus one PES step.
        end = (last + out.span) % PTS_MODULUS
        return not later(end, (pts + self.offset) % PTS_MODULUS)

    def rebase_pcr(self, b: bytearray | memoryview, off: int) -> None:
        """A PCR packet at ``off`` with program_clock_reference: rebase it, flag the first after a
        switch or of a new epoch."""
        up = read_pcr_base(b, off + 6)
        if self.pcr_up is not None and jumped(up, self.pcr_up):
            expected = (self.pcr_out if self.pcr_out is not None else up) + self.pcr_step
            self.pcr_epoch = self._next_epoch(self.pcr_epoch, expected - up - self.offset)
            self.pending_di = True
        elif self.pcr_up is not None and 0 < (up - self.pcr_up) % PTS_MODULUS < _MAX_STEP:
            self.pcr_step = (up - self.pcr_up) % PTS_MODULUS
        self.pcr_up = up
        offset = (self.offset + self.adjust[self.pcr_epoch]) % PTS_MODULUS
        out = (up + offset) % PTS_MODULUS
        if offset:
            write_pcr_base(b, off + 6, out)
        self.pcr_out = out
        if self.pending_di:
            b[off + 5] |= 0x80
            self.pending_di = False

    def pes_start(
        self, out: OutStream, b: bytearray | memoryview, o: int, pts: int | None, dts: int | None
    ) -> None:
        """A PES header at ``o`` with these (upstream) timestamps: rebase them in place, learn the step."""
        if pts is None:
            return
        up = dts if dts is not None else pts
        epoch = self._epoch_of(out)
        if out.up_dts is not None and jumped(up, out.up_dts):
            expected = (out.cur_dts if out.cur_dts is not None else up) + out.frame
            epoch = out.epoch = self._next_epoch(epoch, expected - up - self.offset)
        out.up_dts = up
        offset = (self.offset + self.adjust[epoch]) % PTS_MODULUS
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
        self.adjust = [0]
        self.gen += 1
        self.pcr_epoch = 0
        self.pcr_up = self.pcr_out = None
