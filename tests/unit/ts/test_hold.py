"""relay.ts.hold: the PES hold, the lag, send-ahead, and what a switch drops."""

from __future__ import annotations

import itertools

import pytest

from relay.ts import (
    NULL_PID,
    Splicer,
)
from relay.ts.hold import LAG_PRIOR_S, Lag
from tests.tsbuild import (
    TS,
    B_upstream,
    Upstream,
    cc_errors,
    join,
    paced,
    pes_times,
    pid_of,
    run,
    split,
    ts_packet,
    video_dts,
)


def test_a_stuck_video_pes_stops_holding_the_program_after_hold_max_s() -> None:
    """Given video stops mid-stream while audio flows, Then audio is released after hold_max_s."""
    up = Upstream()
    splicer = Splicer(hold_max_s=1.0, early_after_s=None)
    run(splicer, up.stream(6), now=0.0)
    held = run(splicer, up.stream(2, start=6, video=False), now=0.5)
    assert held == [], "within hold_max_s the current video PES still holds everything after it"
    out = run(splicer, up.stream(2, start=8, video=False), now=1.5)
    assert sum(1 for p in out if pid_of(p) == 0x101) >= 8


def test_a_video_pes_held_for_long_lets_the_other_pids_go_ahead_each_in_its_own_order() -> None:
    """Given a large frame still arriving (held whole), Then after early_after_s the audio and null
    packets behind it go out, and when the frame completes it follows without them: each packet once."""
    up = Upstream()
    splicer = Splicer(early_after_s=0.02)
    out = run(splicer, up.stream(6), now=0.0)  # the last video PES is held from t=0
    fed = up.stream(2, start=6, video=False)
    fed.insert(3, ts_packet(NULL_PID, b"\xff" * 184))
    assert run(splicer, fed, now=0.01) == [], "a short hold keeps the order"
    ahead = run(splicer, up.stream(2, start=8, video=False), now=0.05)
    assert ahead and 0x100 not in {pid_of(p) for p in ahead}
    assert {0x101, NULL_PID} <= {pid_of(p) for p in ahead}
    rest = run(splicer, up.stream(4, start=10), now=0.06)  # video again: the held frame completes
    out += ahead + rest
    assert cc_errors(out) == []  # per PID: nothing twice, nothing lost, in order
    assert sum(1 for p in out if pid_of(p) == NULL_PID) == 1
    assert video_dts(out, 0x100) == sorted(video_dts(out, 0x100))


def test_without_frame_hold_frames_go_out_at_once_and_a_cut_one_is_not_dropped() -> None:
    """frame_hold=False trades the clean cut for pacing: no frame of latency, nothing dropped at a switch."""
    up = Upstream()
    fed = up.stream(6)
    held, flowing = Splicer(), Splicer(frame_hold=False)
    video_held = [p for p in run(held, fed) if pid_of(p) == 0x100]
    video_flowing = [p for p in run(flowing, fed) if pid_of(p) == 0x100]
    assert len(video_flowing) == len(video_held) + up.video_packets  # the last frame is not waited for
    for splicer in (held, flowing):
        splicer.feed([b"".join(up.stream(1, start=6)[:2])], 0.1)  # a frame cut by a dying upstream
        splicer.switch(1.0)
    assert held.dropped_packets > flowing.dropped_packets


def test_held_frames_leave_at_the_pace_they_arrived_without_a_gap_for_a_large_keyframe() -> None:
    """Given keyframes of 60 packets arriving over 30 ms (a 62 kB keyframe at 8 Mbit/s, scaled), Then
    the entry keyframe streams as it arrives (issue 18) and its arrival teaches the lag a read at a
    time (gaps of two reads); this GOP is so short that the next keyframe comes before the lag is
    grown, which leaves one pause shorter than a keyframe's arrival; from there the client never waits
    more than one read for bytes while the frame hold still holds: the output trails the upstream by
    the keyframe's hold, every packet once, in order."""
    up = Upstream(key_packets=60, gop=5)
    fed = up.stream(40)
    splicer = Splicer(early_after_s=None)
    out, times = paced(splicer, fed, 0.0)
    assert times[1] <= 0.003, "the entry keyframe streams from its first read (after our PAT/PMT)"
    gaps = [round((b - a) * 1000, 3) for a, b in itertools.pairwise(times[1:])]
    pauses = [(n, g) for n, g in enumerate(gaps) if g > 2.0]
    assert len(pauses) <= 1 and all(g < 30 for _, g in pauses), "at most one, shorter than a keyframe"
    assert all(n < 60 for n, _ in pauses), "only while the lag grows after the entry"
    later = gaps[60:]
    assert max(later) <= 2.0, f"a read or two (float rounding of the lag) at most, got {max(later)} ms"
    assert 0.029 <= splicer.lag_s <= 0.033, "the keyframe's hold in reads (60 packets, 2 a read), one spare"
    assert cc_errors(out) == [] and video_dts(out, 0x100) == sorted(video_dts(out, 0x100))
    out += split(join(splicer.poll(1.0)))
    assert len(out) >= len(fed) - up.video_packets - 2, "all but the last, unfinished frame went out"


def test_entered_mid_gop_the_lag_expects_a_keyframe_so_the_first_one_leaves_no_gap() -> None:
    """Given an upstream entered without a keyframe (keyframe_wait_s ran out), its small frames alone
    would teach a short lag and the first keyframe would outgrow it: until a keyframe's hold is
    learned, the lag is at least LAG_PRIOR_S; then it is what that keyframe needed."""
    up = Upstream(key_packets=60, gop=30)
    fed = up.stream(45, start=1)  # the keyframe is frame 30
    splicer = Splicer(keyframe_wait_s=0.002, early_after_s=None)
    out, times = paced(splicer, fed, 0.0)
    gaps = [round((b - a) * 1000, 3) for a, b in itertools.pairwise(times[1:])]
    # the entry frame streamed (issue 18); the lag (the prior, then the keyframe's) grew a read at a time
    assert max(gaps) <= 2.0, f"no gap at the first keyframe, got {max(gaps)} ms"
    assert 0.029 <= splicer.lag_s <= 0.033, "learned from the keyframe, the prior is gone"
    assert cc_errors(out) == []


def test_a_lagging_output_still_drops_the_frame_a_dying_upstream_cut() -> None:
    """Given the output trails the upstream, When the upstream dies in the middle of a keyframe, Then
    what had arrived complete goes out at the switch and the cut keyframe never does."""
    up = Upstream(key_packets=60, gop=5)
    fed = up.stream(16)  # frame 15 is a keyframe: cut it after 30 of its 60 packets
    cut = max(n for n, p in enumerate(fed) if pid_of(p) == 0x100 and p[1] & 0x40 and p[5] & 0x40) + 30
    splicer = Splicer(early_after_s=None)
    out, _ = paced(splicer, fed[:cut], 0.0)
    assert splicer.lag_s > 0.02
    cut_dts = pes_times(fed[cut - 30])[1]
    splicer.switch(1.0)
    out += split(join(splicer.feed([b"".join(B_upstream().stream(10))], 1.0)))
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40]
    counts = [sum(1 for p in out[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)]
    assert set(counts) <= {3, 60}, "every video PES that went out is whole"
    assert cut_dts - 3600 in video_dts(out, 0x100), "the complete frame before the cut went out at the switch"
    in_slot = [p for p in out if pid_of(p) == 0x100 and pes_times(p)[1] == cut_dts]
    assert len(in_slot) == 1 and in_slot[0][5] & 0x40, "the cut keyframe's slot is B's keyframe"
    assert cc_errors(out) == []


def test_after_a_switch_the_lag_starts_again_so_the_switch_is_not_slowed_by_it() -> None:
    """Given A's output trails by its keyframe hold, When B takes over with small frames, Then B's entry
    goes out as soon as its keyframe is complete, not a lag later."""
    a = Upstream(key_packets=60, gop=5)
    splicer = Splicer(early_after_s=None)
    paced(splicer, a.stream(12), 0.0)
    assert splicer.lag_s > 0.02
    splicer.switch(1.0)
    assert splicer.lag_s == 0
    b_fed = B_upstream().stream(10)
    _, times = paced(splicer, b_fed, 1.0)
    entry = next(n for n, p in enumerate(b_fed) if pid_of(p) == 0x1E1 and p[1] & 0x40)
    following = next(n for n, p in enumerate(b_fed) if n > entry and pid_of(p) == 0x1E1 and p[1] & 0x40)
    assert times[0] <= 1.0 + (following // 2 + 1) / 1000, "B's entry left when its next PES start came"
    assert splicer.lag_s < 0.01


def test_the_lag_never_holds_more_than_lag_bytes_max() -> None:
    """Given tiny reads (a packet each), the lag counted in reads is long: it is bounded in bytes."""
    fed = Upstream(key_packets=60, gop=5).stream(30)
    unbounded, bounded = Splicer(early_after_s=None), Splicer(early_after_s=None, lag_bytes_max=20 * TS)
    left = []
    for splicer in (unbounded, bounded):
        out, _ = paced(splicer, fed, 0.0, per_ms=1)
        left.append(len(fed) - len(out))
    assert left[0] > 60, "the default keeps the keyframe's ~60 reads back"
    assert left[1] <= 20 + 3 + 2, "bounded: lag_bytes_max plus the last frame, still arriving"


def test_poll_lets_out_what_fell_due_while_the_upstream_was_silent() -> None:
    fed = Upstream(key_packets=60, gop=5).stream(12)
    splicer = Splicer(early_after_s=None)
    out, _ = paced(splicer, fed, 0.0)
    last_read = (len(fed) - 1) // 2 / 1000
    assert splicer.poll(last_read) == [], "nothing more is due at the last read: it trails by the lag"
    late = split(join(splicer.poll(last_read + splicer.lag_s + 0.001)))
    last_start = max(n for n, p in enumerate(fed) if pid_of(p) == 0x100 and p[1] & 0x40)
    assert len(out) + len(late) == last_start, "all but the last frame, held until its end is known"
    assert cc_errors(out + late) == []
    assert splicer.poll(last_read + 5.0) == [], "a silent upstream's unfinished frame never lapses out"


def test_an_unfinished_pes_of_a_dying_upstream_never_reaches_the_client() -> None:
    """Given upstream A dies one packet into a video frame, When we switch, Then that frame is dropped."""
    up = Upstream()
    packets = up.stream(8)
    last_start = max(n for n, p in enumerate(packets) if pid_of(p) == 0x100 and p[1] & 0x40)
    cut = last_start + 2  # two of the frame's three packets arrived
    splicer = Splicer()
    out = run(splicer, packets[:cut])
    cut_dts = pes_times(packets[last_start])[1]
    assert cut_dts not in video_dts(out, 0x100), "held: its end has not been seen"
    splicer.switch(1.0)
    out += run(splicer, B_upstream().stream(10), now=1.0)
    assert cut_dts - 3600 in video_dts(out, 0x100), "the previous, complete frame went out"
    # B's keyframe takes the dropped frame's place on the timeline; A's frame 7 itself never went out.
    in_slot = [p for p in out if pid_of(p) == 0x100 and pes_times(p)[1] == cut_dts]
    assert len(in_slot) == 1 and in_slot[0][5] & 0x40, "the one PES at that DTS is B's keyframe"
    assert cc_errors(out) == []
    # Every video PES that went out is whole: 3 packets.
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40]
    counts = [sum(1 for p in out[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)]
    assert set(counts) == {3}


def test_an_unfinished_pes_is_dropped_even_when_the_switch_comes_after_a_long_stall() -> None:
    """Given A stalls mid-frame and the stall is detected 5 s later (longer than hold_max_s), When we
    switch, Then the half-sent frame is still dropped: found in the demo, where it decoded as garbage."""
    up = Upstream()
    packets = up.stream(8)
    last_start = max(n for n, p in enumerate(packets) if pid_of(p) == 0x100 and p[1] & 0x40)
    splicer = Splicer()
    out = run(splicer, packets[: last_start + 2])
    cut_dts = pes_times(packets[last_start])[1]
    splicer.switch(5.0)  # the stall timeout later: nothing was fed meanwhile
    out += run(splicer, B_upstream().stream(10), now=5.0)
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40]
    counts = [sum(1 for p in out[a:b] if pid_of(p) == 0x100) for a, b in itertools.pairwise(starts)]
    assert set(counts) == {3}, "every video PES that went out is whole"
    in_slot = [p for p in out if pid_of(p) == 0x100 and pes_times(p)[1] == cut_dts]
    assert len(in_slot) == 1 and in_slot[0][5] & 0x40, "the one PES at that DTS is B's keyframe"


def test_a_complete_bounded_audio_pes_is_not_held() -> None:
    """Audio PES carry PES_packet_length: once complete they go out, they do not wait for the next one."""
    up = Upstream(video_type=0)
    splicer = Splicer()
    out = run(splicer, up.stream(3, video=False), chunk=100)
    assert sum(1 for p in out if pid_of(p) == 0x101) == 6


# --- Lag on its own -------------------------------------------------------------------------------------


def _lag_at(step_s: float, reads: int = 5, **kw: float) -> Lag:
    lag = Lag(**kw)  # type: ignore[arg-type]
    for k in range(reads):
        lag.read(k * 10, k * step_s)
    return lag


def test_the_lag_learns_the_longest_hold_in_reads_with_one_to_spare() -> None:
    lag = _lag_at(0.001)
    lag.learn(30, 1.0, keyframe_held=True)
    assert lag.keep == 31 and lag.lag_s == pytest.approx(0.031)
    lag.learn(3, 1.5, keyframe_held=True)
    assert lag.keep == 31, "the longest hold of the window still counts"


def test_the_lag_forgets_a_long_hold_once_it_left_the_window() -> None:
    lag = _lag_at(0.001, lag_window_s=10.0)
    lag.learn(30, 1.0, keyframe_held=True)
    lag.learn(3, 12.0, keyframe_held=True)
    assert lag.keep == 4


def test_until_a_keyframe_was_held_the_lag_is_at_least_the_prior() -> None:
    lag = _lag_at(0.001)
    lag.learn(3, 1.0, keyframe_held=False)
    assert lag.lag_s == pytest.approx(LAG_PRIOR_S, abs=0.0015), "LAG_PRIOR_S in reads (minus one), one spare"
    lag.learn(3, 1.1, keyframe_held=True)
    assert lag.keep == 4


def test_a_frame_that_waited_for_nothing_leaves_no_lag_and_a_switch_restarts_it() -> None:
    lag = _lag_at(0.001)
    lag.learn(0, 1.0, keyframe_held=True)
    assert lag.keep == 0
    lag.learn(8, 1.1, keyframe_held=True)
    assert lag.keep == 9
    lag.restart()
    assert lag.keep == 0 and lag.lag_s == 0
    lag.learn(2, 1.2, keyframe_held=True)
    assert lag.keep == 3, "the long hold before the switch is forgotten"


def _lag_of_three_reads() -> Lag:
    lag = _lag_at(0.001, reads=0)
    lag.learn(2, 0.0, keyframe_held=True)
    assert lag.keep == 3
    for k in range(1, 8):
        lag.read(k * 10, k * 0.001)  # read k ends the held output at index 10k
    return lag


def test_the_output_due_trails_the_reads_by_the_lag() -> None:
    """With a lag of 3 reads, what is due is the output of the read three reads back, never past a
    read whose frame is still held (``done``); a silent upstream's output goes once older than the lag."""
    assert _lag_of_three_reads().due_limit(0.008, done=1000, out_next=70) == 40, "reads 5, 6, 7 stay held"
    assert _lag_of_three_reads().due_limit(0.008, done=15, out_next=70) == 20, "up to the held frame's read"
    polled = _lag_of_three_reads()
    assert polled.due_limit(0.0075, done=1000, out_next=70, polled=True) == 0, "reads still come: they do it"
    assert polled.due_limit(1.0, done=1000, out_next=70, polled=True) == 70, "silent for longer than the lag"
