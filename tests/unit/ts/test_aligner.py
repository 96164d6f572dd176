"""relay.ts.aligner: PacketAligner cuts bytes into whole packets, zero-copy, resyncing after garbage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.ts import (
    PacketAligner,
)
from tests.tsbuild import (
    TS,
    Upstream,
    join,
    split,
)


def test_aligned_input_comes_back_as_one_view_without_copy() -> None:
    data = b"".join(Upstream().stream(3))
    aligner = PacketAligner()
    out = aligner.feed(data)
    assert len(out) == 1 and out[0].obj is data and bytes(out[0]) == data
    assert aligner.synced and aligner.garbage_bytes == 0


def test_garbage_before_the_stream_is_counted_and_skipped() -> None:
    """Given an HTML error page then TS, When fed, Then the packets come out and the page is garbage."""
    html = b"<html><body>GGG 403 Forbidden GGGG</body></html>\n" * 3
    data = b"".join(Upstream().stream(3))
    aligner = PacketAligner()
    assert join(aligner.feed(html + data)) == data
    assert aligner.garbage_bytes == len(html)


def test_a_page_that_never_syncs_is_all_garbage() -> None:
    aligner = PacketAligner()
    page = b"<!DOCTYPE html>" + b"G" * 7 + b"x" * 20_000
    out = []
    for i in range(0, len(page), 1000):
        out += aligner.feed(page[i : i + 1000])
    assert out == [] and not aligner.synced
    assert aligner.garbage_bytes >= len(page) - 5 * TS


def test_resync_after_garbage_mid_stream_drops_the_cut_packet() -> None:
    """Given a packet cut short (60 bytes lost) mid-stream, Then it is dropped and sync returns after it."""
    packets = Upstream().stream(4)
    cut = 10
    data = b"".join(packets[:cut]) + packets[cut][:128] + b"".join(packets[cut + 1 :])
    aligner = PacketAligner()
    out = split(join(aligner.feed(data)))
    assert out == packets[:cut] + packets[cut + 1 :]
    assert aligner.synced and aligner.garbage_bytes > 0


def test_byte_by_byte_feeding_carries_over() -> None:
    data = b"".join(Upstream().stream(2))
    aligner = PacketAligner()
    out = []
    for i in range(len(data)):
        out += aligner.feed(data[i : i + 1])
    assert join(out) == data


@settings(max_examples=60, deadline=None)
@given(
    frames=st.integers(1, 6),
    cuts=st.lists(st.integers(1, 3000), max_size=12),
    garbage=st.lists(st.tuples(st.integers(0, 40), st.binary(min_size=1, max_size=300)), max_size=3),
)
def test_aligner_emits_only_whole_valid_packets_whatever_the_chunking(
    frames: int, cuts: list[int], garbage: list[tuple[int, bytes]]
) -> None:
    packets = Upstream().stream(frames)
    for at, junk in sorted(garbage, reverse=True):
        packets.insert(min(at, len(packets)), junk)
    data = b"".join(packets)
    aligner = PacketAligner(sync_packets=3)
    out: list[memoryview] = []
    pos = 0
    for step in cuts:
        out += aligner.feed(data[pos : pos + step])
        pos += step
    out += aligner.feed(data[pos:])
    blob = join(out)
    assert len(blob) % TS == 0
    assert blob[::TS] == b"\x47" * (len(blob) // TS)
    if not garbage:
        assert blob == data
