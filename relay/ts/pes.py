"""PES and timestamps: PTS/DTS and PCR fields read and written in place, random-access detection.

Timestamps are 33-bit counters of a 90 kHz clock (the PCR base too; its 9-bit 27 MHz extension is left
alone), so every comparison wraps: ``later(a, b)`` is "a after b" on that circle, within half of it.
A decoder can start at a PES whose first packet carries random_access_indicator, or whose payload shows
what a keyframe starts with (``is_random_access``): the splice's clean entry waits for one.
"""

from __future__ import annotations

from relay.ts.packet import TS_PACKET_SIZE, payload_offset

_PKT = TS_PACKET_SIZE
PTS_MODULUS = 1 << 33  # PTS/DTS and the PCR base are 33-bit counters of a 90 kHz clock
_HALF = PTS_MODULUS >> 1
_NO_PES_HEADER = frozenset({0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF})  # stream_ids without PTS fields


def read_timestamp(b: bytes | bytearray | memoryview, o: int) -> int:
    """A 33-bit PTS/DTS from its 5-byte PES header field at offset ``o``."""
    return ((b[o] >> 1) & 0x07) << 30 | b[o + 1] << 22 | (b[o + 2] >> 1) << 15 | b[o + 3] << 7 | b[o + 4] >> 1


def write_timestamp(b: bytearray | memoryview, o: int, value: int) -> None:
    """Rewrite a PTS/DTS field in place, keeping its 4-bit prefix and marker bits."""
    b[o] = (b[o] & 0xF0) | ((value >> 29) & 0x0E) | 1
    b[o + 1] = (value >> 22) & 0xFF
    b[o + 2] = ((value >> 14) & 0xFE) | 1
    b[o + 3] = (value >> 7) & 0xFF
    b[o + 4] = ((value << 1) & 0xFE) | 1


def read_pcr_base(b: bytes | bytearray | memoryview, o: int) -> int:
    """The 33-bit program_clock_reference_base at offset ``o`` (the 9-bit extension is left alone)."""
    return b[o] << 25 | b[o + 1] << 17 | b[o + 2] << 9 | b[o + 3] << 1 | b[o + 4] >> 7


def write_pcr_base(b: bytearray | memoryview, o: int, base: int) -> None:
    b[o] = (base >> 25) & 0xFF
    b[o + 1] = (base >> 17) & 0xFF
    b[o + 2] = (base >> 9) & 0xFF
    b[o + 3] = (base >> 1) & 0xFF
    b[o + 4] = ((base & 1) << 7) | (b[o + 4] & 0x7F)


def pes_timestamps(b: bytes | bytearray | memoryview, off: int, p: int) -> tuple[int | None, int | None]:
    """(PTS, DTS) of the PES header starting at payload offset ``p``, when the first packet holds them."""
    o = off + p
    if p + 14 > _PKT or b[o] or b[o + 1] or b[o + 2] != 1 or b[o + 3] in _NO_PES_HEADER:
        return None, None
    flags = b[o + 7] >> 6
    if not flags & 2:
        return None, None
    pts = read_timestamp(b, o + 9)
    if flags == 3 and p + 19 <= _PKT:
        return pts, read_timestamp(b, o + 14)
    return pts, None


def is_random_access(
    b: bytes | bytearray | memoryview, off: int, stream_type: int, pes: int | None = None
) -> bool:
    """Whether the packet at ``off`` starts a PES at a point a decoder can start from.

    True on random_access_indicator, else on what the first packet's PES payload shows: H.264 IDR or
    SPS, HEVC IRAP/VPS/SPS, MPEG-2 sequence header, GOP header or I-picture. Encoders put parameter
    sets in front of every keyframe, so a keyframe whose first packet shows none relies on the RAI.
    """
    if (b[off + 3] & 0x20) and b[off + 4] and b[off + 5] & 0x40:
        return True
    p = payload_offset(b, off) if pes is None else pes
    if p + 9 > _PKT:
        return False
    es = bytes(b[off + p + 9 + b[off + p + 8] : off + _PKT])
    i = es.find(b"\x00\x00\x01")
    while 0 <= i < len(es) - 3:
        code = es[i + 3]
        if stream_type == 0x1B:
            if code & 0x1F in (5, 7):
                return True
        elif stream_type == 0x24:
            if 16 <= (code >> 1) & 0x3F <= 23 or (code >> 1) & 0x3F in (32, 33):
                return True
        elif stream_type in (0x01, 0x02):
            if code in (0xB3, 0xB8) or (code == 0 and i + 5 < len(es) and (es[i + 5] >> 3) & 7 == 1):
                return True
        else:
            return False
        i = es.find(b"\x00\x00\x01", i + 3)
    return False


def later(a: int, b: int) -> bool:
    """a is after b on the 33-bit wrapping 90 kHz clock."""
    return 0 < (a - b) % PTS_MODULUS < _HALF
