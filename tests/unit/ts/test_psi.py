"""relay.ts.psi: CRC-32/MPEG-2, PAT/PMT sections built and parsed, section reassembly."""

from __future__ import annotations

from relay.ts import (
    ElementaryStream,
    ProgramMap,
    build_pat_section,
    build_pmt_section,
    crc32_mpeg2,
    packetize_section,
    parse_pat,
    parse_pmt,
)
from relay.ts.psi import SectionAssembler, es_key, stream_kind


def test_crc32_mpeg2_check_value() -> None:
    """CRC-32/MPEG-2 catalogue check value over "123456789"."""
    assert crc32_mpeg2(b"123456789") == 0x0376E6E7


def test_built_sections_round_trip_and_crc_is_zero_over_the_whole_section() -> None:
    program = ProgramMap(
        7,
        0x1E1,
        b"\x05\x04HDMV",
        (ElementaryStream(0x02, 0x1E1), ElementaryStream(0x03, 0x1E2, b"\x0a\x04eng\x00")),
    )
    pmt = build_pmt_section(program, version=3)
    assert crc32_mpeg2(pmt) == 0
    assert parse_pmt(pmt) == (program, 3)
    pat = build_pat_section(0x42, [(7, 0x1E0)])
    assert crc32_mpeg2(pat) == 0
    assert parse_pat(pat) == (0x42, 0, [(7, 0x1E0)])


def _big_pmt(streams: int) -> bytes:
    rows = tuple(ElementaryStream(0x06, 0x200 + k, b"\x0a\x04eng\x00" * 4) for k in range(streams))
    return build_pmt_section(ProgramMap(1, 0x200, b"", rows), version=5)


def test_a_section_over_several_packets_is_reassembled_once_and_its_repeats_are_not_returned() -> None:
    section = _big_pmt(20)  # > 184 bytes: several packets
    packets = packetize_section(0x1000, section, continuity_counter=14)
    assert len(packets) > 1 and [p[3] & 0x0F for p in packets[:3]] == [14, 15, 0]
    assert all(len(p) == 188 and p[0] == 0x47 for p in packets)
    assembler = SectionAssembler()
    got = [s for p in packets for s in assembler.push(p)]
    assert got == [section] and parse_pmt(got[0])[1] == 5
    assert [s for p in packets for s in assembler.push(p)] == [], "an identical repeat is not parsed again"


def test_a_section_with_a_bad_crc_is_not_returned() -> None:
    section = bytearray(build_pat_section(1, [(1, 0x1000)]))
    section[9] ^= 0x01
    packet = packetize_section(0, bytes(section))[0]
    assert SectionAssembler().push(packet) == []


def test_stream_kind_knows_dvb_audio_and_the_key_tells_codecs_apart() -> None:
    assert stream_kind(0x1B) == "video" and stream_kind(0x0F) == "audio"
    assert stream_kind(0x06, b"\x6a\x01\x00") == "audio", "AC-3 descriptor on a private PES"
    assert stream_kind(0x06, b"\x59\x00") == "data", "DVB subtitles"
    assert es_key(ElementaryStream(0x06, 0x100, b"\x6a\x01\x00")) != es_key(
        ElementaryStream(0x06, 0x100, b"\x7a\x00")
    )
    assert es_key(ElementaryStream(0x1B, 0x100)) == es_key(ElementaryStream(0x1B, 0x1E1, b"\x0a\x04eng\x00"))
