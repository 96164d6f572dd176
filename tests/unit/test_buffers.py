"""ReadBuffer (relay/buffers.py) and the in-place path it feeds: feed_region, Splicer regions."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.buffers import ReadBuffer, unreferenced
from relay.ts import PacketAligner, Splicer
from tests.tsbuild import TS, B_upstream, Upstream, cc_errors, join, pid_of, split


def read_through(data: bytes, sizes: list[int], rb: ReadBuffer, aligner: PacketAligner) -> list[memoryview]:
    """Read ``data`` into ``rb`` in reads of ``sizes`` (cycled), as the upstream protocol does."""
    out: list[memoryview] = []
    pos, i = 0, 0
    while pos < len(data):
        region = rb.region()
        n = min(sizes[i % len(sizes)], len(region), len(data) - pos)
        i += 1
        region[:n] = data[pos : pos + n]
        region.release()
        pos += n
        rb.filled(n)
        views, consumed, _ = aligner.feed_region(rb.buf, rb.start, rb.end)
        rb.consume(consumed)
        out += views
    return out


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
    garbage=st.lists(st.tuples(st.integers(0, 40), st.binary(min_size=1, max_size=300)), max_size=3),
)
def test_reads_in_place_give_whole_valid_packets_whatever_the_read_sizes(
    sizes: list[int], garbage: list[tuple[int, bytes]]
) -> None:
    clean = Upstream().stream(8)
    packets = list(clean)
    for at, junk in sorted(garbage, reverse=True):
        packets.insert(min(at, len(packets)), junk)
    data = b"".join(packets)
    rb = ReadBuffer(min_size=1024, max_size=8192)
    got = join(read_through(data, sizes, rb, PacketAligner(sync_packets=3)))
    assert len(got) % TS == 0 and got[::TS] == b"\x47" * (len(got) // TS)
    if not garbage:
        assert got == data
    else:  # around garbage a cut packet may be dropped, nothing else: the rest keeps its order
        it = iter(clean)
        assert all(any(p == q for q in it) for p in split(got))


def test_synced_reads_come_out_as_one_view_of_the_read_buffer_without_copy() -> None:
    data = b"".join(Upstream().stream(20))
    rb, aligner = ReadBuffer(min_size=4096, max_size=4096), PacketAligner()
    views = read_through(data, [1000, 777, 1500], rb, aligner)
    assert join(views) == data[: len(join(views))]
    in_place = [v for v in views if isinstance(v.obj, bytearray)]
    assert len(in_place) >= len(views) - 1  # only the first packet, before sync, is the aligner's copy


def test_a_buffer_is_reused_only_once_nothing_refers_to_it() -> None:
    rb = ReadBuffer(min_size=1000, max_size=1000)
    first = rb.buf
    kept = memoryview(first)[:10]  # e.g. a client's write queue still holds packets of it
    for _ in range(8):
        rb.filled(len(rb.region()))
        rb.consume(rb.end)
    assert rb.buf is not first and not unreferenced(first)
    made = rb.buffers_made
    kept.release()
    for _ in range(8):
        rb.filled(len(rb.region()))
        rb.consume(rb.end)
    assert rb.buffers_made == made, "spares that nothing refers to are reused, not reallocated"


def test_the_unconsumed_tail_moves_to_the_next_buffer_and_full_reads_grow_it() -> None:
    rb = ReadBuffer(min_size=1000, max_size=4000)
    region = rb.region()
    region[:] = bytes(range(250)) * 4
    rb.filled(1000)  # the whole region: the upstream had more
    rb.consume(900)
    assert len(rb.region()) == 2000 - 100 and len(rb.buf) == 2000
    assert rb.buf[:100] == (bytes(range(250)) * 4)[900:]
    assert (rb.start, rb.end) == (0, 100)


def test_small_reads_after_a_burst_shrink_the_buffer_back() -> None:
    """Given a burst that grew the buffer, When reads stay small, Then buffers halve to the minimum."""
    rb = ReadBuffer(min_size=1024, max_size=8192)
    for _ in range(12):  # the burst: every read fills what is offered
        rb.filled(len(rb.region()))
        rb.consume(rb.end)
    assert len(rb.buf) == 8192
    for _ in range(200):  # the paced stream: 100-byte reads
        rb.region()
        rb.filled(100)
        rb.consume(rb.end)
    assert len(rb.buf) == 1024


def test_a_region_fed_to_the_splicer_is_rewritten_in_place_and_gives_the_same_output() -> None:
    """Given the same two upstreams fed by copy and in place, Then the output bytes are identical."""
    a, b = Upstream().stream(12), B_upstream().stream(12, start=3)
    outs = []
    bufs: list[bytearray] = []
    objs: list[int] = []
    for in_place in (False, True):
        splicer = Splicer()
        out: list[bytes] = []
        for now, packets in ((0.0, a), (1.0, b)):
            if now:
                splicer.switch(now)
            for i in range(0, len(packets), 9):
                buf = bytearray(7) + bytearray(b"".join(packets[i : i + 9]))  # the region starts at 7
                view = memoryview(buf)[7:]
                got = splicer.feed([view], now, (buf, 7) if in_place else None)
                out += split(join(got))
                bufs.append(buf)
                objs += [id(g.obj) for g in got if isinstance(g, memoryview)]
        outs.append(out)
    assert outs[0] == outs[1]
    assert {id(b) for b in bufs[len(bufs) // 2 :]} & set(objs), "in place: output views of the regions"
    assert cc_errors(outs[1]) == [] and {pid_of(p) for p in outs[1]} >= {0x100, 0x101}


def test_reads_of_random_sizes_in_place_give_the_same_output_as_the_copying_splicer() -> None:
    rng = random.Random(5)
    a, b = b"".join(Upstream().stream(30)), b"".join(B_upstream().stream(30, start=4))
    rb, aligner = ReadBuffer(min_size=2048, max_size=16384), PacketAligner()
    in_place, copying = Splicer(), Splicer()
    out: list[bytes] = []
    ref: list[bytes] = []
    regions = 0
    for now, data in ((0.0, a), (1.0, b)):
        if now:
            in_place.switch(now)
            copying.switch(now)
        pos = 0
        while pos < len(data):
            region = rb.region()
            n = min(rng.randint(1, 6000), len(region), len(data) - pos)
            region[:n] = data[pos : pos + n]
            region.release()
            pos += n
            rb.filled(n)
            start = rb.start
            views, consumed, whole = aligner.feed_region(rb.buf, start, rb.end)
            rb.consume(consumed)
            if views:
                ref += split(join(copying.feed(views, now)))  # copies before the other one rewrites
                regions += whole
                out += split(join(in_place.feed(views, now, (rb.buf, start) if whole else None)))
    assert out == ref and regions > 10
    assert cc_errors(out) == []


def test_release_drops_every_buffer_and_a_later_read_still_gets_space() -> None:
    rb = ReadBuffer(min_size=1000, max_size=4000)
    for _ in range(6):
        rb.filled(len(rb.region()))
        rb.consume(rb.end)
    rb.release()
    assert len(rb.buf) == 0 and not rb._spares
    assert len(rb.region()) == 1000


def test_an_aborted_upstream_protocol_lets_go_of_its_read_buffers() -> None:
    """A closed protocol may wait in a reference cycle for a full GC: it must not hold megabytes meanwhile."""
    from types import SimpleNamespace

    from relay.shell.upstream import _ResponseProtocol

    proto = _ResponseProtocol(SimpleNamespace(url="http://127.0.0.1/"), b"")  # type: ignore[arg-type]
    proto.get_buffer(-1)[:10] = b"HTTP/1.1 2"  # a head still arriving
    proto.buffer_updated(10)
    proto.abort()
    assert len(proto.reads.buf) == 0
