"""MPEG-TS, sans-IO: packets, PSI, PES timestamps and the seamless splice (ISO/IEC 13818-1 names).

Nothing here touches a socket, a clock or a config: bytes and `now` in, bytes out.
"""

from relay.ts.splicer import (
    NULL_PID,
    PTS_MODULUS,
    ElementaryStream,
    PacketAligner,
    ProgramMap,
    Splicer,
    build_pat_section,
    build_pmt_section,
    crc32_mpeg2,
    is_random_access,
    packetize_section,
    parse_pat,
    parse_pmt,
    read_pcr_base,
    read_timestamp,
    write_timestamp,
)

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
