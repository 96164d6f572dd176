"""The joiners' GOP (relay/ts/gop.py), fed the Splicer's real output."""

from __future__ import annotations

from relay.ts import Splicer
from relay.ts.gop import GopCache, keyframe_at
from relay.ts.pes import is_random_access
from tests.tsbuild import B_upstream, Upstream, cc_errors, join, pid_of, split


def session(
    splicer: Splicer, gop: GopCache, packets: list[bytes], now: float = 0.0, chunk: int = 7
) -> list[bytes]:
    """Feed the splicer as the session does, adding every output chunk to the GOP; the output."""
    out: list[bytes] = []
    for i in range(0, len(packets), chunk):
        got = splicer.feed([b"".join(packets[i : i + chunk])], now)
        if got:
            gop.add(got, splicer.video_stream)
            out += split(join(got))
    return out


def test_keyframe_at_finds_the_last_keyframe_of_a_chunk() -> None:
    up = Upstream(gop=5)
    data = b"".join(up.stream(12))
    off = keyframe_at(data, 0x100, 0x1B)
    assert off is not None and is_random_access(data, off, 0x1B)
    later = b"".join(up.stream(3, start=12))  # frames 12-14: no keyframe (every 5th frame is one)
    assert keyframe_at(later, 0x100, 0x1B) is None
    assert keyframe_at(b"".join(up.stream(12))[: 5 * 188], 0x101, 0x0F) is None


def test_a_joiner_gets_prefix_then_the_gop_from_its_keyframe_with_clean_continuity() -> None:
    up = Upstream(gop=5)
    splicer, gop = Splicer(frame_hold=False), GopCache(1 << 20)
    sent = session(splicer, gop, up.stream(23))  # the last keyframe is frame 20
    snap = split(join(gop.snapshot(splicer.psi_pids)))
    video = splicer.video_stream
    assert video is not None
    first = snap[0]
    assert pid_of(first) == video[0] and is_random_access(first, 0, video[1])
    assert not [p for p in snap if pid_of(p) in splicer.psi_pids]
    assert snap == [p for p in sent[sent.index(first) :] if pid_of(p) not in splicer.psi_pids]
    prefix = split(splicer.join_prefix())  # at the join, as Outputs.add sends it
    live = session(splicer, gop, up.stream(3, start=23))
    joiner = prefix + snap + live
    assert cc_errors(joiner) == []


def test_the_gop_is_dropped_when_it_outgrows_its_bound_and_starts_again_at_the_next_keyframe() -> None:
    up = Upstream(gop=50)
    splicer, gop = Splicer(frame_hold=False), GopCache(20 * 188)
    session(splicer, gop, up.stream(3))
    assert gop.size and gop.size <= 20 * 188
    session(splicer, gop, up.stream(20, start=3))
    assert gop.size == 0 and gop.snapshot(splicer.psi_pids) == []
    session(splicer, gop, up.stream(1, start=50))
    assert gop.size > 0


def test_a_switch_clears_it_and_the_new_upstreams_entry_keyframe_starts_it_again() -> None:
    splicer, gop = Splicer(frame_hold=False), GopCache(1 << 20)
    session(splicer, gop, Upstream().stream(8))
    assert gop.size
    splicer.switch(1.0)
    gop.clear()
    assert gop.snapshot(splicer.psi_pids) == []
    session(splicer, gop, B_upstream().stream(8), now=1.0)
    snap = split(join(gop.snapshot(splicer.psi_pids)))
    video = splicer.video_stream
    assert video is not None and snap and is_random_access(snap[0], 0, video[1])


def test_off_without_video_or_with_a_zero_bound() -> None:
    splicer, gop = Splicer(frame_hold=False), GopCache(0)
    session(splicer, gop, Upstream().stream(8))
    assert gop.snapshot(splicer.psi_pids) == []
    radio, gop = Splicer(frame_hold=False), GopCache(1 << 20)
    session(radio, gop, Upstream(video_type=0).stream(8))
    assert radio.video_stream is None and gop.snapshot(radio.psi_pids) == []
