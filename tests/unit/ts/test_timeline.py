"""relay.ts.timeline: one timeline across upstreams, rebase mod 2^33, discontinuity_indicator."""

from __future__ import annotations

import itertools

from relay.ts import (
    PTS_MODULUS,
    Splicer,
)
from relay.ts.program import OutStream
from relay.ts.timeline import Timeline
from tests.tsbuild import (
    B_upstream,
    Upstream,
    pcr_of,
    pes,
    pes_times,
    pid_of,
    run,
    ts_packet,
    two_upstreams,
    video_dts,
)


def test_only_the_first_pcr_packet_after_a_switch_has_discontinuity_indicator() -> None:
    _, out = two_upstreams(cut_a=57, start_b=3)
    flagged = [n for n, p in enumerate(out) if pcr_of(p) is not None and p[5] & 0x80]
    assert len(flagged) == 1
    n = flagged[0]
    assert [pid_of(p) for p in out[n - 2 : n + 1]] == [0, 0x1000, 0x100], "it is B's entry packet"
    assert any(pcr_of(p) is not None for p in out[:n]), "A's PCRs went out before, unflagged"


def test_pts_dts_pcr_continue_monotonically_one_frame_after_the_last_output() -> None:
    _splicer, out = two_upstreams(cut_a=57, start_b=3)
    dts = video_dts(out, 0x100)
    assert all(0 < b - a < 90000 for a, b in itertools.pairwise(dts)), dts
    steps = [b - a for a, b in itertools.pairwise(dts)]
    assert set(steps) == {3600}, "the new upstream starts exactly one frame after the last output frame"
    pcrs = [pcr_of(p) for p in out if pcr_of(p) is not None]
    assert all(0 < b - a < 90000 for a, b in itertools.pairwise(pcrs))
    audio = [t for p in out if pid_of(p) == 0x101 for t in [pes_times(p)[0]] if t is not None]
    assert all(b > a for a, b in itertools.pairwise(audio))


def test_rebase_wraps_modulo_2_33() -> None:
    """Given the old timeline just before the 33-bit wrap, Then the new one continues across it."""
    splicer = Splicer()
    out = run(splicer, Upstream(t0=PTS_MODULUS - 6 * 3600).stream(5))
    splicer.switch(1.0)
    out += run(splicer, B_upstream().stream(10), now=1.0)
    dts = video_dts(out, 0x100)
    assert dts[0] == PTS_MODULUS - 6 * 3600 and min(dts) < 10 * 3600, "crossed the wrap"
    assert all((b - a) % PTS_MODULUS == 3600 for a, b in itertools.pairwise(dts))


# --- Timeline on its own --------------------------------------------------------------------------------


def _pes_packet(pts: int, dts: int | None = None, pid: int = 0x100) -> bytearray:
    return bytearray(ts_packet(pid, pes(0xE0, b"\x00" * 20, pts, dts)[:170], pusi=True))


def test_the_first_upstream_keeps_its_timestamps() -> None:
    timeline = Timeline()
    assert timeline.enter(123_456) == 0
    packet = _pes_packet(1000, 900)
    timeline.pes_start(OutStream(0x100), packet, 4 + 1 + packet[4], 1000, 900)
    assert pes_times(bytes(packet)) == (1000, 900)


def test_a_later_upstream_is_rebased_one_frame_after_the_last_reference_dts_across_the_wrap() -> None:
    """Given the reference stream's last DTS 1800 ticks before the wrap, When B enters at DTS 5,000,000,
    Then B's first DTS lands one frame (3600) later, past 2^33: 1800."""
    timeline = Timeline()
    ref, other = OutStream(0x100, cur_dts=PTS_MODULUS - 1800, frame=3600), OutStream(0x101, cur_dts=77)
    timeline.finish([(True, ref), (False, other)], entered=True)
    assert timeline.end == 1800 and timeline.pending_di and timeline.offset == 0
    offset = timeline.enter(5_000_000)
    assert offset == (1800 - 5_000_000) % PTS_MODULUS
    packet = _pes_packet(5_000_000 + 7200, 5_000_000)
    out = OutStream(0x100)
    timeline.pes_start(out, packet, 4 + 1 + packet[4], 5_000_000 + 7200, 5_000_000)
    assert pes_times(bytes(packet)) == (1800 + 7200, 1800), "PTS and DTS both moved, in place"
    assert (out.cur_pts, out.cur_dts) == (9000, 1800)


def test_without_reference_output_the_timeline_goes_on_after_the_latest_other_stream() -> None:
    timeline = Timeline()
    a = OutStream(0x101, cur_dts=PTS_MODULUS - 100, frame=1920)
    b = OutStream(0x102, cur_dts=50, frame=1920)  # after a's, across the wrap
    timeline.finish([(True, OutStream(0x100)), (False, a), (False, b)], entered=False)
    assert timeline.end == 50 + 1920, "b is later on the wrapping clock, one (largest) step on"
    assert not timeline.pending_di, "nothing of that upstream went out: no discontinuity to flag"


def test_only_the_first_pcr_after_a_switch_is_flagged_and_pcrs_are_rebased() -> None:
    timeline = Timeline()
    timeline.finish([(True, OutStream(0x100, cur_dts=10_000, frame=3600))], entered=True)
    timeline.enter(1_000_000)
    first = bytearray(ts_packet(0x100, b"", pcr=1_000_000 - 1800))
    second = bytearray(ts_packet(0x100, b"", pcr=1_000_000 + 1800))
    timeline.rebase_pcr(first, 0)
    timeline.rebase_pcr(second, 0)
    assert pcr_of(bytes(first)) == 13_600 - 1800 and first[5] & 0x80
    assert pcr_of(bytes(second)) == 13_600 + 1800 and not second[5] & 0x80


def test_pes_start_learns_the_frame_step_and_ignores_a_jump() -> None:
    timeline = Timeline()
    out = OutStream(0x100)
    for dts in (0, 3003, 6006, 6006 + 200_000):
        packet = _pes_packet(dts)
        timeline.pes_start(out, packet, 4 + 1 + packet[4], dts, None)
    assert out.frame == 3003 and out.span == 3003, "a step of 2.2 s is a jump in the source, not a frame"
    assert (out.prev_dts, out.cur_dts) == (6006, 206_006)


def test_a_stream_enters_only_after_the_end_of_its_last_output_pes() -> None:
    timeline = Timeline()
    timeline.offset = 1000
    out = OutStream(0x101, cur_pts=50_000, span=1920)
    assert not timeline.may_enter(out, 50_000 + 1920 - 1000 - 1), "would overlap the last PES"
    assert timeline.may_enter(out, 50_000 + 1920 - 1000)
    assert timeline.may_enter(OutStream(0x102), 5), "nothing went out on that PID yet"
