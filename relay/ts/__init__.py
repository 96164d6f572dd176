"""MPEG-TS, sans-IO: packets, PSI, PES timestamps and the seamless splice (ISO/IEC 13818-1 names).

Nothing here touches a socket, a clock or a config: bytes and `now` in, bytes out. One module a concern:
packet (header, constants, columns), aligner (PacketAligner), psi (sections, PAT/PMT, CRC), pes
(PTS/DTS/PCR, random access), continuity, timeline, program (PID map, PMT versioning), hold (hold, lag,
send-ahead), fastpath (a read column-wise) and splicer (the Splicer that coordinates them).
"""

from relay.ts.aligner import PacketAligner
from relay.ts.packet import NULL_PID
from relay.ts.pes import PTS_MODULUS, is_random_access, read_pcr_base, read_timestamp, write_timestamp
from relay.ts.psi import (
    ElementaryStream,
    ProgramMap,
    build_pat_section,
    build_pmt_section,
    crc32_mpeg2,
    packetize_section,
    parse_pat,
    parse_pmt,
)
from relay.ts.splicer import Splicer

__all__ = [
    "NULL_PID",
    "PTS_MODULUS",
    "ElementaryStream",
    "PacketAligner",
    "ProgramMap",
    "Splicer",
    "build_pat_section",
    "build_pmt_section",
    "crc32_mpeg2",
    "is_random_access",
    "packetize_section",
    "parse_pat",
    "parse_pmt",
    "read_pcr_base",
    "read_timestamp",
    "write_timestamp",
]
