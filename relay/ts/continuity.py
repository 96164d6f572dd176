"""continuity_counter of the output: every PID counts on across switches, as the client saw it.

- Elementary streams: each output PID continues from where the client saw it. A per-PID delta is fixed
  at entry (``entry_delta``) and added to the upstream's own counters (one lane-wise addition a read in
  the fast path, ``restamp``), so an upstream's own CC errors stay visible. At a switch the next
  counter due is fixed (``carry_over``): after the last packet let through, or, when the dead
  upstream's unfinished PES is dropped, the counter that PES began with.
- PSI: our PAT/PMT packets are numbered when they go out, not when they are made (``stamp``), so the
  counters follow the output order even when one read holds many of them. An upstream's own PAT/PMT
  passing unchanged ("native", relay/ts/program.py) sets its PID's counter to the upstream's as it goes
  out (``follow``). Packets waiting in the held output are marked with their output index
  (``mark``) and numbered in that order as the output is released (``settle_to``).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from relay.ts.packet import HIGH4_T, LOW4_T, mask0f

if TYPE_CHECKING:
    from relay.ts.program import OutStream

_Packet = bytearray | memoryview


class Continuity:
    """The output's continuity counters: PSI counters per PID, and the held PSI packets to number."""

    __slots__ = ("_marks", "_psi")

    def __init__(self) -> None:
        self._psi: dict[int, int] = {}  # PID -> last continuity_counter sent on it
        # PSI packets in the held output: ours written in place (stamped when released), or the
        # upstream's own passing unchanged (``native``: their counter becomes ours when released)
        self._marks: deque[tuple[int, _Packet, bool]] = deque()

    # --- PSI ------------------------------------------------------------------------------------------

    def last(self, pid: int) -> int | None:
        """The last continuity_counter sent on a PSI PID, None before the first."""
        return self._psi.get(pid)

    def stamp(self, packet: _Packet) -> _Packet:
        """Give a generated PSI packet its continuity_counter at the moment it goes out."""
        pid = ((packet[1] & 0x1F) << 8) | packet[2]
        cc = (self._psi.get(pid, -1) + 1) & 0x0F
        self._psi[pid] = cc
        packet[3] = (packet[3] & 0xF0) | cc
        return packet

    def follow(self, packet: _Packet) -> None:
        """An upstream's own PSI packet goes out unchanged: its counter is its PID's from now on."""
        self._psi[((packet[1] & 0x1F) << 8) | packet[2]] = packet[3] & 0x0F

    def adopt(self, pid: int, upstream_cc: int) -> None:
        """Our copy goes out just before the upstream's packet carrying ``upstream_cc``: counters run on."""
        self._psi[pid] = (upstream_cc - 1) & 0x0F

    def repeat_last(self, packet: bytes | bytearray) -> bytearray:
        """A copy carrying the last counter sent on its PID (a joiner accepts any first value)."""
        q = bytearray(packet)
        cc = self._psi.get(((q[1] & 0x1F) << 8) | q[2])
        if cc is not None:
            q[3] = (q[3] & 0xF0) | cc
        return q

    def mark(self, index: int, packet: _Packet, native: bool) -> None:
        """A PSI packet waits at output ``index``: numbered (or followed, ``native``) when it goes out."""
        self._marks.append((index, packet, native))

    def mark_in_order(self, index: int, packet: _Packet) -> None:
        """Like ``mark`` for a native packet found after later ones were marked: keeps output order."""
        marks = self._marks
        marks.append((index, packet, True))
        if len(marks) > 1 and marks[-2][0] > marks[-1][0]:
            self._marks = deque(sorted(marks, key=lambda m: m[0]))

    @property
    def native_pending(self) -> bool:
        """An upstream's own PSI waits in the held output: its counters are fixed, nothing may go between."""
        return any(native for _, _, native in self._marks)

    def settle_to(self, index: int) -> None:
        """Number the PSI packets of the held output before ``index``: counters go in output order."""
        marks = self._marks
        while marks and marks[0][0] < index:
            _, packet, native = marks.popleft()
            if native:
                self.follow(packet)
            else:
                self.stamp(packet)

    # --- elementary streams ---------------------------------------------------------------------------

    @staticmethod
    def entry_delta(next_cc: int | None, h3: int) -> int:
        """The delta for a stream entering with header byte 3 ``h3`` when ``next_cc`` is due on its PID.

        None: a PID the client has not seen yet keeps the upstream's counter. A packet without payload
        repeats the previous counter, so it is due one less.
        """
        if next_cc is None:
            return 0
        return (next_cc - (0 if h3 & 0x10 else 1) - h3) & 0x0F

    @staticmethod
    def carry_over(out: OutStream, unfinished: bool) -> None:
        """At a switch: the counter the stream's next packet must carry (``out.next_cc``)."""
        if unfinished:  # its last PES is dropped: it takes that PES's place
            out.next_cc = out.pes_cc
        elif out.last_cc is not None:
            out.next_cc = (out.last_cc + 1) & 0x0F

    @staticmethod
    def restamp(b3: bytes, add: bytes) -> bytes:
        """Header byte 3 of every packet with its lane of ``add`` added to continuity_counter, mod 16."""
        n = len(b3)
        low = int.from_bytes(b3.translate(LOW4_T), "little")
        high = int.from_bytes(b3.translate(HIGH4_T), "little")
        return ((low + int.from_bytes(add, "little")) & mask0f(n) | high).to_bytes(n, "little")
