"""The last GOP of a session's output, so a viewer who zaps in starts at once. Sans-IO.

A viewer joining a running session used to wait for the next keyframe (a 2 s GOP: ~1 s median).
Peers start joiners from a buffer instead; so does this: the session keeps what it sent since the
last video keyframe (by reference: the views it wrote, no copy), up to `max_bytes`, and a joiner gets
the output program's PAT/PMT, then that GOP at once, then the live data. The cache is cleared at a
switch (the next upstream's entry keyframe starts it again) and when it outgrows `max_bytes` (a joiner
then waits for the next keyframe, as before).

Continuity: the GOP is a suffix of the output, so each PID's continuity_counter runs on into the live
data; only its PAT/PMT packets are left out of a snapshot, because the joiner's PAT/PMT (the Splicer's
`join_prefix`) repeat the counter last sent on those PIDs, and the next live PSI continues from it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from relay.ts.packet import TS_PACKET_SIZE
from relay.ts.pes import is_random_access

_PKT = TS_PACKET_SIZE

View = bytes | memoryview


def keyframe_at(data: View, pid: int, stream_type: int) -> int | None:
    """Byte offset of the last packet in ``data`` (whole packets) that starts a video PES at a random
    access point on ``pid``; None if there is none. Scans the header columns, not every packet."""
    b1 = bytes(data[1::_PKT])
    b2 = bytes(data[2::_PKT])
    hi, lo = 0x40 | (pid >> 8), pid & 0xFF  # payload_unit_start_indicator set, on that PID
    i = b2.rfind(lo)
    while i >= 0:
        if b1[i] & 0x5F == hi and is_random_access(data, i * _PKT, stream_type):
            return i * _PKT
        i = b2.rfind(lo, 0, i)
    return None


class GopCache:
    """What went out since the last keyframe, bounded in bytes; see the module docstring."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._views: list[View] = []
        self._bytes = 0
        self._valid = False  # it starts at a keyframe and has not outgrown max_bytes

    @property
    def size(self) -> int:
        return self._bytes if self._valid else 0

    def clear(self) -> None:
        """A switch: the next upstream's entry keyframe starts the next GOP."""
        self._views, self._bytes, self._valid = [], 0, False

    def add(self, views: Sequence[View], video: tuple[int, int] | None) -> None:
        """Output that went to the viewers; ``video`` is the output's (video PID, stream_type)."""
        if self.max_bytes <= 0 or video is None:
            return
        pid, stype = video
        for v in views:
            off = keyframe_at(v, pid, stype) if len(v) >= _PKT else None
            if off is not None:
                rest = memoryview(v)[off:] if off else v
                self._views, self._bytes, self._valid = [rest], len(rest), True
            elif self._valid:
                self._views.append(v)
                self._bytes += len(v)
            if self._bytes > self.max_bytes:
                self.clear()

    def snapshot(self, psi_pids: Collection[int]) -> list[View]:
        """The GOP for a joiner, without packets on ``psi_pids`` (PAT, PMT); [] when there is none."""
        if not self._valid:
            return []
        out: list[View] = []
        for v in self._views:
            b1, b2 = bytes(v[1::_PKT]), bytes(v[2::_PKT])
            start = 0
            for i in range(len(b1)):
                if ((b1[i] & 0x1F) << 8 | b2[i]) in psi_pids:
                    if i > start:
                        out.append(memoryview(v)[start * _PKT : i * _PKT])
                    start = i + 1
            if start == 0:
                out.append(v)
            elif start < len(b1):
                out.append(memoryview(v)[start * _PKT :])
        return out
