"""TS packet header: constants, accessors, and the column helpers the fast path and send-ahead share.

A packet is 188 bytes: sync_byte 0x47, then transport_error/payload_unit_start/priority + the 13-bit
PID, then scrambling/adaptation_field_control/continuity_counter (ISO/IEC 13818-1, 2.4.3.2). The
splice reads these fields either one packet at a time (``pid_of``, ``payload_offset``) or as columns:
byte 1, 2 or 3 of every packet of a read, cut with one strided slice of the bytearray, classified
through 256-entry ``bytes.translate`` tables and combined as big integers (one lane a packet).
"""

from __future__ import annotations

import functools

TS_PACKET_SIZE = 188
SYNC_BYTE = 0x47
PAT_PID = 0x0000
NULL_PID = 0x1FFF

NULL_PACKET = bytes([SYNC_BYTE, 0x1F, 0xFF, 0x10]) + b"\xff" * 184  # AFC=01 payload only, as 13818-1 wants

_PKT = TS_PACKET_SIZE
SYNC = bytes([SYNC_BYTE])


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    """A flat unsigned-byte view of ``data`` (no copy)."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def pid_of(b: bytes | bytearray | memoryview, off: int = 0) -> int:
    """The 13-bit PID of the packet at ``off``."""
    return ((b[off + 1] & 0x1F) << 8) | b[off + 2]


def payload_offset(b: bytes | bytearray | memoryview, off: int = 0) -> int:
    """Offset (from the packet start) of the payload; >= 188 when the packet carries none."""
    afc = (b[off + 3] >> 4) & 3
    if not afc & 1:
        return _PKT
    return 4 + (1 + b[off + 4] if afc & 2 else 0)


# --- columns: one lane (byte) per packet ----------------------------------------------------------------

PUSI_T = bytes(1 if b & 0x40 else 0 for b in range(256))  # header byte 1: payload_unit_start_indicator
AF_T = bytes(1 if b & 0x20 else 0 for b in range(256))  # header byte 3: an adaptation field follows
PCRF_T = bytes(1 if b & 0x10 else 0 for b in range(256))  # adaptation field flags: PCR_flag
TOP3_T = bytes(b & 0xE0 for b in range(256))  # byte 1 without its PID bits
LOW4_T = bytes(b & 0x0F for b in range(256))  # byte 3: continuity_counter
HIGH4_T = bytes(b & 0xF0 for b in range(256))  # byte 3 without continuity_counter
_MASKS: dict[int, int] = {}


def mask0f(n: int) -> int:
    """``n`` lanes of 0x0F: keeps each lane's continuity_counter after a lane-wise addition."""
    m = _MASKS.get(n)
    if m is None:
        m = _MASKS[n] = int.from_bytes(b"\x0f" * n, "little")
    return m


@functools.cache
def pid_hi_table(hi: int) -> bytes:
    """translate table: header byte 1 -> 1 when its PID bits are ``hi``."""
    return bytes(1 if b & 0x1F == hi else 0 for b in range(256))


@functools.cache
def pid_lo_table(lo: int) -> bytes:
    """translate table: header byte 2 -> 1 when it is ``lo``."""
    return bytes(1 if b == lo else 0 for b in range(256))


def ones(lanes: bytes) -> list[int]:
    """Indexes of the 1 bytes in a column of 0/1 lanes (memchr-fast, unlike a regex scan)."""
    out = []
    j = lanes.find(1)
    while j >= 0:
        out.append(j)
        j = lanes.find(1, j + 1)
    return out


def ints(*cols: bytes) -> list[int]:
    """Columns as little-endian integers: lane-wise arithmetic on all packets at once."""
    return [int.from_bytes(c, "little") for c in cols]
