"""relay.ts.pes: PTS/DTS and PCR fields rewritten in place, 33-bit wrap order, random-access detection."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.ts import PTS_MODULUS, is_random_access, read_pcr_base, read_timestamp, write_timestamp
from relay.ts.packet import payload_offset
from relay.ts.pes import later, pes_timestamps, write_pcr_base
from tests.tsbuild import H264_DELTA, H264_KEY, MPEG2_DELTA, MPEG2_KEY, pcr_field, pes, ts_packet


@given(value=st.integers(0, PTS_MODULUS - 1), prefix=st.sampled_from([0x2, 0x3, 0x1]))
def test_a_timestamp_written_in_place_reads_back_and_keeps_its_prefix_and_marker_bits(
    value: int, prefix: int
) -> None:
    field = bytearray([prefix << 4 | 1, 0, 1, 0, 1])
    write_timestamp(field, 0, value)
    assert read_timestamp(field, 0) == value
    assert field[0] >> 4 == prefix and field[0] & 1 and field[2] & 1 and field[4] & 1


@given(base=st.integers(0, PTS_MODULUS - 1), old=st.integers(0, PTS_MODULUS - 1), ext=st.integers(0, 511))
def test_a_pcr_base_rewritten_in_place_leaves_the_27_mhz_extension_alone(
    base: int, old: int, ext: int
) -> None:
    field = bytearray(pcr_field(old, ext))
    write_pcr_base(field, 0, base)
    assert read_pcr_base(field, 0) == base
    assert ((field[4] & 1) << 8 | field[5]) == ext and field[4] & 0x7E == 0x7E


def test_later_is_after_on_the_wrapping_clock() -> None:
    assert later(10, PTS_MODULUS - 10), "just after the wrap is later than just before it"
    assert not later(PTS_MODULUS - 10, 10)
    assert not later(5, 5)
    assert later(PTS_MODULUS // 2 - 1, 0) and not later(PTS_MODULUS // 2 + 1, 0), "within half the circle"


def test_pes_timestamps_reads_pts_and_dts_of_the_first_packet_and_none_without_them() -> None:
    both = ts_packet(0x100, pes(0xE0, b"\x00" * 20, 1000, 900)[:170], pusi=True)
    pts_only = ts_packet(0x101, pes(0xC0, b"\x00" * 20, 1234)[:170], pusi=True)
    none = ts_packet(0x101, pes(0xC0, b"\x00" * 20)[:170], pusi=True)
    padding = ts_packet(0x101, pes(0xBE, b"\x00" * 20, 1234)[:170], pusi=True)  # padding_stream: no fields
    for packet, want in (
        (both, (1000, 900)),
        (pts_only, (1234, None)),
        (none, (None, None)),
        (padding, (None, None)),
    ):
        assert pes_timestamps(packet, 0, payload_offset(packet)) == want


@pytest.mark.parametrize(
    ("stream_type", "es", "rai", "want"),
    [
        (0x1B, H264_KEY, False, True),  # SPS + IDR in the first packet
        (0x1B, H264_DELTA, False, False),  # a non-IDR slice
        (0x1B, H264_DELTA, True, True),  # random_access_indicator says so
        (0x02, MPEG2_KEY, False, True),  # sequence header, I picture
        (0x02, MPEG2_DELTA, False, False),  # P picture
        (0x24, b"\x00\x00\x01\x40\x01", False, True),  # HEVC VPS
        (0x24, b"\x00\x00\x01\x26\x01", False, True),  # HEVC IDR_W_RADL (IRAP)
        (0x24, b"\x00\x00\x01\x02\x01", False, False),  # HEVC TRAIL_R
        (0x0F, H264_KEY, False, False),  # not a video stream type: no payload rule
    ],
)
def test_random_access_is_the_rai_or_what_the_first_packet_payload_starts_with(
    stream_type: int, es: bytes, rai: bool, want: bool
) -> None:
    packet = ts_packet(0x100, pes(0xE0, es + b"\x11" * 40, 9000)[:170], pusi=True, pcr=0, rai=rai)
    assert is_random_access(packet, 0, stream_type) is want
    at = b"\x00" * 188 + packet  # at an offset inside a larger chunk
    assert is_random_access(at, 188, stream_type) is want
