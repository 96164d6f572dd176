"""The fast path: a read of an entered upstream handled column-wise, in place, not packet by packet.

Between switches a chunk is handled column-wise: header bytes 1-3 of all packets are gathered with
strided slices of the bytearray, classified by PID through 256-entry translate tables and big-integer
lane arithmetic, and written back in place (PID remap and continuity_counter delta, ``columns``). Only
PES starts, PCRs, PSI and unknown PIDs are looked at one by one by the Splicer (a few per frame; where
no PES header needs rewriting, only each stream's last two PES starts of a chunk); a bounded audio PES
is counted to its end by walking its packets with bytes.find on the class column (``count_pes``).
Packets of PIDs outside the program (SDT, EIT, other services) become null packets in place (the
Splicer's per-packet path); null packets pass. Everything here runs once per read, never per packet:
the per-packet work is C (``bytes.translate``, ``int`` arithmetic, ``bytes.find``).

Header columns are cut from the bytearray itself: an extended slice of a bytearray is ~7x cheaper than
one of a memoryview.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.ts.continuity import Continuity
from relay.ts.packet import AF_T, NULL_PID, PAT_PID, PCRF_T, PUSI_T, TOP3_T, TS_PACKET_SIZE, ints, ones
from relay.ts.program import OutStream, UpstreamState
from relay.ts.psi import psi_key

_PKT = TS_PACKET_SIZE


@dataclass(slots=True)
class Tables:
    """Translate tables of the fast path for the current routes (class = hi code << 4 | lo code)."""

    hi: bytes
    lo: bytes
    kind: bytes  # per class: 0 rewritten column-wise, 1 each packet looked at
    new_hi: bytes
    new_lo: bytes
    delta: bytes
    identity: bool
    tracked: list[tuple[int, OutStream]]  # class byte -> output stream, for last_cc
    counted: list[tuple[int, OutStream]]  # audio classes: bounded PES are counted to their end
    psi: list[tuple[int, bytes]]  # class, psi_key of ours: PSI that passes as the upstream sent it


def build_tables(src: UpstreamState, pat_packets: list[bytearray], pmt_packets: list[bytearray]) -> Tables:
    """Translate tables for the fast path: which PIDs pass column-wise, and how they are rewritten."""
    pids = {PAT_PID, NULL_PID, *src.routes}
    if src.pmt_pid is not None:
        pids.add(src.pmt_pid)
    his = sorted({p >> 8 for p in pids})[:15]
    los = sorted({p & 0xFF for p in pids})[:15]
    hi_code = {h: i + 1 for i, h in enumerate(his)}
    lo_code = {v: i + 1 for i, v in enumerate(los)}
    kind = bytearray(b"\x01" * 256)
    new_hi = bytearray(256)
    new_lo = bytearray(256)
    delta = bytearray(256)
    identity = True
    tracked: list[tuple[int, OutStream]] = []
    counted: list[tuple[int, OutStream]] = []
    psi: list[tuple[int, bytes]] = []
    for pid in pids:
        h, v = hi_code.get(pid >> 8), lo_code.get(pid & 0xFF)
        if h is None or v is None:
            continue  # more than 15 distinct PID bytes: this PID takes the per-packet path
        c = h << 4 | v
        if pid == NULL_PID:
            kind[c], new_hi[c], new_lo[c] = 0, 0x1F, 0xFF
            continue
        if pid in src.psi_native and pid in (PAT_PID, src.pmt_pid):
            ours = pat_packets if pid == PAT_PID else pmt_packets
            kind[c], new_hi[c], new_lo[c] = 0, pid >> 8, pid & 0xFF
            psi.append((c, psi_key(ours[0])))
            continue
        route = src.routes.get(pid)
        if route is None or not route.entered or route.kind == "pcr":
            continue
        kind[c] = 0
        if route.kind == "audio":
            counted.append((c, route.out))
        out_pid = route.out.pid
        new_hi[c], new_lo[c], delta[c] = out_pid >> 8, out_pid & 0xFF, route.cc_delta
        identity = identity and out_pid == pid and route.cc_delta == 0
        tracked.append((c, route.out))
    return Tables(
        hi=bytes(hi_code.get(b & 0x1F, 0) << 4 for b in range(256)),
        lo=bytes(lo_code.get(b, 0) for b in range(256)),
        kind=bytes(kind),
        new_hi=bytes(new_hi),
        new_lo=bytes(new_lo),
        delta=bytes(delta),
        identity=identity,
        tracked=tracked,
        counted=counted,
        psi=psi,
    )


def columns(
    whole: bytearray,
    base: int,
    size: int,
    b1: bytes,
    b2: bytes,
    b3: bytes,
    tables: Tables,
    rebase: bool,
) -> tuple[list[int], bytes, bytes, dict[int, int]]:
    """Classify and rewrite the packets of ``whole[base:size]`` in place, column-wise.

    ``b1``..``b3``: their header bytes 1-3 as cut before. ``rebase``: timestamps are being rebased (or
    a discontinuity is due), so every PES start and PCR packet needs a look. Returns the packet indexes
    the Splicer must look at one by one (sorted), the class column, the new header byte 3 column, and
    per native PSI class the first packet that no longer equals ours.
    """
    n = len(b1)
    hi, lo = ints(b1.translate(tables.hi), b2.translate(tables.lo))
    clsi = hi | lo
    cls = clsi.to_bytes(n, "little")
    kind, pusi = ints(cls.translate(tables.kind), b1.translate(PUSI_T))
    special = kind
    if rebase:
        af, pcrf = ints(b3.translate(AF_T), bytes(whole[base + 5 : size : _PKT]).translate(PCRF_T))
        special |= af & pcrf | pusi
    positions = ones(special.to_bytes(n, "little")) if special else []
    if pusi and not rebase:
        # Nothing to rewrite in a PES header: only each stream's last two PES starts matter (the
        # one held now, and the step from the one before it: the frame duration).
        starts = (clsi & pusi * 0xFF).to_bytes(n, "little")
        for c, _o in tables.tracked:
            j = starts.rfind(c)
            if j >= 0:
                positions.append(j)
                j = starts.rfind(c, 0, j)
                if j >= 0:
                    positions.append(j)
    psi_stop: dict[int, int] = {}
    for c, key in tables.psi:  # native PSI: each packet must still equal ours, else look at it
        j = cls.find(c)
        while j >= 0:
            o = base + j * _PKT
            if psi_key(whole[o : o + _PKT]) != key:
                positions.append(j)
                psi_stop[c] = j
                break
            j = cls.find(c, j + 1)
    positions.sort()
    if tables.identity:
        return positions, cls, b3, psi_stop
    top, pid_hi = ints(b1.translate(TOP3_T), cls.translate(tables.new_hi))
    whole[base + 1 : size : _PKT] = (top | pid_hi).to_bytes(n, "little")
    whole[base + 2 : size : _PKT] = cls.translate(tables.new_lo)
    new_b3 = Continuity.restamp(b3, cls.translate(tables.delta))
    whole[base + 3 : size : _PKT] = new_b3
    return positions, cls, new_b3, psi_stop


def count_pes(buf: memoryview, cls: bytes, b3: bytes, c: int, o: OutStream, end: int, chunk: int) -> None:
    """Count a bounded PES's payload through this chunk's packets of its class; release it when whole."""
    j = o.pes_index + 1 if o.pes_chunk == chunk else 0
    remaining = o.pes_remaining
    while (j := cls.find(c, j, end)) >= 0:
        h3 = b3[j]
        if h3 & 0x10:
            remaining -= _PKT - (5 + buf[j * _PKT + 4] if h3 & 0x20 else 4)
            if remaining <= 0:
                o.pes_start = None
                remaining = -1
                break
        j += 1
    o.pes_remaining = remaining


def settle(
    tables: Tables,
    buf: memoryview,
    cls: bytes,
    b3: bytes,
    new_b3: bytes,
    end: int,
    out_next: int,
    psi_stop: dict[int, int],
    chunk: int,
    continuity: Continuity,
) -> None:
    """After the Splicer's pass over packets ``[0, end)`` of a chunk: what the columns tell per stream.

    Each stream's last continuity_counter, the bounded audio PES counted on, and the last native PSI
    packet let through (its counter is the one to follow).
    """
    for c, o in tables.tracked:
        j = cls.rfind(c, 0, end)
        if j >= 0 and new_b3:
            o.last_cc = new_b3[j] & 0x0F
    for c, o in tables.counted:
        if o.pes_remaining > 0:
            count_pes(buf, cls, b3, c, o, end, chunk)
    for c, _ in tables.psi:
        j = cls.rfind(c, 0, min(end, psi_stop.get(c, end)))
        if j >= 0:
            continuity.mark_in_order(max(out_next - (end - j), 0), buf[j * _PKT : (j + 1) * _PKT])


def undo(whole: bytearray, rest: int, size: int, b1: bytes, b2: bytes, b3: bytes, end: int) -> None:
    """Put back the original headers of packets ``end`` on (from ``rest``): they are processed again."""
    whole[rest + 1 : size : _PKT] = b1[end:]
    whole[rest + 2 : size : _PKT] = b2[end:]
    whole[rest + 3 : size : _PKT] = b3[end:]
