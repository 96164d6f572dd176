"""PSI: CRC-32/MPEG-2, long-form sections, PAT and PMT build and parse, section reassembly.

What the splice's program logic (relay/ts/program.py) builds its output PAT/PMT from and reads the
upstream's with. Sections are one per table here (no multi-section tables: a PAT or PMT of a single
program fits one). Names follow ISO/IEC 13818-1, 2.4.4.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from relay.ts.packet import SYNC_BYTE, TS_PACKET_SIZE

_PKT = TS_PACKET_SIZE

VIDEO_STREAM_TYPES = frozenset({0x01, 0x02, 0x10, 0x1B, 0x1F, 0x20, 0x24, 0x33, 0x42, 0xD1, 0xEA})
AUDIO_STREAM_TYPES = frozenset({0x03, 0x04, 0x0F, 0x11, 0x1C, 0x2D, 0x81, 0x82, 0x83, 0x84, 0x85, 0x87})
_AUDIO_DESCRIPTORS = frozenset({0x6A, 0x7A, 0x7B, 0x7C})  # AC-3, E-AC-3, DTS, AAC (DVB, on type 0x06)
_SUBTITLE_DESCRIPTORS = frozenset({0x56, 0x59})  # teletext, DVB subtitles


# --- CRC-32/MPEG-2 ------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc32_mpeg2(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/MPEG-2 (poly 0x04C11DB7, init ~0, no reflection); 0 over a whole section means intact."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in bytes(data):
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ b]
    return crc


# --- sections, PAT, PMT ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElementaryStream:
    """One row of a PMT's elementary stream loop."""

    stream_type: int
    elementary_PID: int
    ES_info: bytes = b""


@dataclass(frozen=True)
class ProgramMap:
    """The content of a PMT section (version_number aside: the Splicer owns the output's)."""

    program_number: int
    PCR_PID: int
    program_info: bytes = b""
    streams: tuple[ElementaryStream, ...] = ()

    @property
    def has_video(self) -> bool:
        return any(stream_kind(es.stream_type, es.ES_info) == "video" for es in self.streams)


def _descriptor_tags(info: bytes) -> list[int]:
    tags, i = [], 0
    while i + 2 <= len(info):
        tags.append(info[i])
        i += 2 + info[i + 1]
    return tags


def stream_kind(stream_type: int, es_info: bytes = b"") -> str:
    """'video', 'audio' or 'data': what the hold, the keyframe gate and the NoVideo check care about."""
    if stream_type in VIDEO_STREAM_TYPES:
        return "video"
    if stream_type in AUDIO_STREAM_TYPES:
        return "audio"
    if stream_type == 0x06 and _AUDIO_DESCRIPTORS.intersection(_descriptor_tags(es_info)):
        return "audio"
    return "data"


def es_key(es: ElementaryStream) -> tuple[int, ...]:
    """What must match for two upstreams' streams to share an output PID: type (+ codec descriptor)."""
    if es.stream_type == 0x06:
        tags = sorted(
            _AUDIO_DESCRIPTORS.union(_SUBTITLE_DESCRIPTORS).intersection(_descriptor_tags(es.ES_info))
        )
        return (0x06, *tags)
    return (es.stream_type,)


def _section(table_id: int, id_ext: int, version: int, body: bytes) -> bytes:
    """A long-form PSI section (section_syntax_indicator=1, one section) with its CRC_32."""
    length = 5 + len(body) + 4
    head = bytes(
        [
            table_id,
            0xB0 | (length >> 8),
            length & 0xFF,
            id_ext >> 8,
            id_ext & 0xFF,
            0xC1 | ((version & 0x1F) << 1),  # reserved, version_number, current_next_indicator=1
            0,
            0,
        ]
    )
    data = head + body
    return data + crc32_mpeg2(data).to_bytes(4, "big")


def build_pat_section(
    transport_stream_id: int, programs: Iterable[tuple[int, int]], version: int = 0
) -> bytes:
    """PAT (table_id 0x00) from (program_number, program_map_PID) pairs."""
    body = b"".join(bytes([n >> 8, n & 0xFF, 0xE0 | (pid >> 8), pid & 0xFF]) for n, pid in programs)
    return _section(0x00, transport_stream_id, version, body)


def build_pmt_section(program: ProgramMap, version: int = 0) -> bytes:
    """PMT (table_id 0x02) for ``program``."""
    info = program.program_info
    body = bytearray(
        [0xE0 | (program.PCR_PID >> 8), program.PCR_PID & 0xFF, 0xF0 | (len(info) >> 8), len(info) & 0xFF]
    )
    body += info
    for es in program.streams:
        pid, es_info = es.elementary_PID, es.ES_info
        body += bytes(
            [es.stream_type, 0xE0 | (pid >> 8), pid & 0xFF, 0xF0 | (len(es_info) >> 8), len(es_info) & 0xFF]
        )
        body += es_info
    return _section(0x02, program.program_number, version, bytes(body))


def parse_pat(section: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """(transport_stream_id, version_number, [(program_number, PID)]) of a CRC-checked PAT section."""
    if section[0] != 0x00:
        raise ValueError("not a PAT section")
    end = len(section) - 4
    programs = [
        (int.from_bytes(section[i : i + 2], "big"), ((section[i + 2] & 0x1F) << 8) | section[i + 3])
        for i in range(8, end - 3, 4)
    ]
    return int.from_bytes(section[3:5], "big"), (section[5] >> 1) & 0x1F, programs


def parse_pmt(section: bytes) -> tuple[ProgramMap, int]:
    """(ProgramMap, version_number) of a CRC-checked PMT section."""
    if section[0] != 0x02:
        raise ValueError("not a PMT section")
    end = len(section) - 4
    info_len = ((section[10] & 0x0F) << 8) | section[11]
    i = 12 + info_len
    streams = []
    while i + 5 <= end:
        es_len = ((section[i + 3] & 0x0F) << 8) | section[i + 4]
        pid = ((section[i + 1] & 0x1F) << 8) | section[i + 2]
        streams.append(ElementaryStream(section[i], pid, bytes(section[i + 5 : i + 5 + es_len])))
        i += 5 + es_len
    program = ProgramMap(
        program_number=int.from_bytes(section[3:5], "big"),
        PCR_PID=((section[8] & 0x1F) << 8) | section[9],
        program_info=bytes(section[12 : 12 + info_len]),
        streams=tuple(streams),
    )
    return program, (section[5] >> 1) & 0x1F


def packetize_section(pid: int, section: bytes, continuity_counter: int = 0) -> list[bytearray]:
    """TS packets carrying one section (pointer_field 0, 0xFF stuffing); CCs count up from the given one."""
    data = b"\x00" + section
    packets = []
    for n, i in enumerate(range(0, len(data), 184)):
        chunk = data[i : i + 184]
        head = bytes(
            [
                SYNC_BYTE,
                (0x40 if i == 0 else 0) | (pid >> 8),
                pid & 0xFF,
                0x10 | ((continuity_counter + n) & 0x0F),
            ]
        )
        packets.append(bytearray(head + chunk + b"\xff" * (184 - len(chunk))))
    return packets


class SectionAssembler:
    """Reassembles the PSI sections of one PID; returns each complete, CRC-checked section that differs
    from the previous one (PSI repeats every ~100 ms: identical repeats are not checked or parsed again)."""

    __slots__ = ("_active", "_buf", "_last")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._active = False
        self._last = b""

    def push(self, packet: bytes | bytearray | memoryview) -> list[bytes]:
        afc = (packet[3] >> 4) & 3
        if not afc & 1:
            return []
        p = 4 + (1 + packet[4] if afc & 2 else 0)
        if p >= _PKT:
            return []
        payload = bytes(packet[p:_PKT])
        out: list[bytes] = []
        if packet[1] & 0x40:
            pointer = payload[0]
            if self._active:
                self._buf += payload[1 : 1 + pointer]
                out += self._drain()
            self._buf = bytearray(payload[1 + pointer :])
            self._active = True
        elif self._active:
            self._buf += payload
        else:
            return out
        out += self._drain()
        if len(self._buf) > 4096:  # no PSI section is that long: lost a start, wait for the next
            self._buf.clear()
            self._active = False
        return out

    def _drain(self) -> list[bytes]:
        out = []
        buf = self._buf
        while len(buf) >= 3:
            if buf[0] == 0xFF:  # stuffing: nothing more in this unit
                buf.clear()
                self._active = False
                break
            length = 3 + (((buf[1] & 0x0F) << 8) | buf[2])
            if len(buf) < length:
                break
            section = bytes(buf[:length])
            del buf[:length]
            if section != self._last and length > 7 and crc32_mpeg2(section) == 0:
                self._last = section
                out.append(section)
        return out


def psi_key(packet: bytes | bytearray | memoryview) -> bytes:
    """A PSI packet without its continuity_counter: equal keys mean the same packet for a demuxer."""
    return bytes(packet[1:3]) + bytes((packet[3] & 0xF0,)) + bytes(packet[4:_PKT])
