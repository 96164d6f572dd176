"""relay.ts.splicer: the Splicer end to end: clean entry, keyframe gating, bridge, health, passthrough."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay.ts import (
    NULL_PID,
    PTS_MODULUS,
    PacketAligner,
    Splicer,
    parse_pat,
)
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
    sections_on,
    split,
    video_dts,
)


def test_first_upstream_enters_with_pat_pmt_then_a_keyframe() -> None:
    """Given an upstream joined mid-GOP, Then output starts PAT, PMT, then the video keyframe PES."""
    up = Upstream()
    splicer = Splicer()
    out = run(splicer, up.stream(12, start=2))
    assert splicer.entered
    assert [pid_of(p) for p in out[:3]] == [0, 0x1000, 0x100]
    assert out[2][3] & 0x20 and out[2][5] & 0x40  # random_access_indicator kept
    assert pes_times(out[2])[1] == up.t0 + 5 * up.frame  # frame 5 is the first keyframe; timeline untouched
    assert splicer.dropped_packets > 0


def test_the_splicer_never_writes_into_the_callers_buffer() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(6))
    splicer.switch(1.0)
    data = bytearray(b"".join(B_upstream().stream(10)))
    before = bytes(data)
    out = split(join(splicer.feed([memoryview(data)], 1.0)))
    assert data == before and {pid_of(p) for p in out} & {0x100, 0x101}


def test_entry_sent_once_the_entry_keyframe_starts_going_out_and_it_streams_as_it_arrives() -> None:
    """The session's switch time ends at entry_sent: when our PAT/PMT and the start of the backup's
    keyframe went out. The keyframe is not held whole (issue 18): it streams as it arrives, so the
    first picture costs what a direct reconnect costs."""
    splicer = Splicer(early_after_s=None)
    paced(splicer, Upstream().stream(8), 0.0)
    splicer.switch(1.0)
    fed = B_upstream(key_packets=60).stream(5)
    key = next(n for n, p in enumerate(fed) if pid_of(p) == 0x1E1 and p[1] & 0x40)
    out, _ = paced(splicer, fed[:key], 1.0)
    assert not splicer.entry_sent, "no keyframe yet"
    out2, _ = paced(splicer, fed[key : key + 30], 1.05)
    assert splicer.entered and splicer.entry_sent, "half the keyframe arrived: it is going out"
    both = out + out2
    k = next(n for n, p in enumerate(both) if pid_of(p) == 0x100 and p[1] & 0x40 and p[5] & 0x40)
    assert [pid_of(p) for p in both[k - 2 : k]] == [0, 0x1000], "our PAT/PMT before it"
    assert sum(1 for p in both[k:] if pid_of(p) == 0x100) >= 28, "the keyframe's packets so far, out"
    more, _ = paced(splicer, fed[key + 30 :], 1.1)
    assert cc_errors(both + more) == []
    assert sum(1 for p in (both + more)[k:] if pid_of(p) == 0x100) >= 60, "then the rest of it"


def test_a_backup_that_dies_inside_its_first_frame_leaves_that_frame_cut_then_the_next_entry() -> None:
    """What a client sees when a backup dies inside the keyframe it entered with (README, "Splice"):
    that keyframe streamed, so its start went out and cannot be taken back; the next upstream then
    enters cleanly (our PAT/PMT, its keyframe, counters continuous), so one picture is broken and the
    stream is whole again at the next upstream's first frame."""
    splicer = Splicer(early_after_s=None)
    paced(splicer, Upstream().stream(8), 0.0)
    splicer.switch(1.0)
    b_fed = B_upstream(key_packets=60).stream(5)
    key = next(n for n, p in enumerate(b_fed) if pid_of(p) == 0x1E1 and p[1] & 0x40)
    out_b, _ = paced(splicer, b_fed[: key + 20], 1.0)  # B dies 20 packets into its first keyframe
    splicer.switch(2.0)
    c_fed = Upstream(key_packets=60).stream(12, start=0)
    out_c, _ = paced(splicer, c_fed, 2.0)
    out = out_b + out_c
    starts = [n for n, p in enumerate(out) if pid_of(p) == 0x100 and p[1] & 0x40 and p[5] & 0x40]
    assert len(starts) >= 2, "B's entry keyframe and C's"
    b_key = [p for p in out[starts[0] : starts[1]] if pid_of(p) == 0x100]
    assert 18 <= len(b_key) <= 20, "B's keyframe went out as far as it arrived: cut, not held back"
    assert [pid_of(p) for p in out[starts[1] - 2 : starts[1]]] == [0, 0x1000], "C enters after PAT/PMT"
    c_video = [p for p in out[starts[1] :] if pid_of(p) == 0x100]
    assert len(c_video) >= 60, "C's keyframe and the frames after it go out"
    assert cc_errors(out) == [], "counters stay continuous across the cut frame"
    assert splicer.entry_sent and splicer.switches == 2


def test_keyframe_gating_drops_packets_before_the_random_access_point() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(10))
    splicer.switch(1.0)
    b = B_upstream()
    pre = run(splicer, b.stream(3, start=2), now=1.1)  # frames 2..4: no keyframe
    assert not splicer.entered
    assert {pid_of(p) for p in pre} <= {0x101}, "only A's complete leftovers (audio) go out meanwhile"
    out = run(splicer, b.stream(5, start=5), now=1.3)
    assert splicer.entered
    assert splicer.last_entry_wait_s == pytest.approx(0.2)
    first_video = next(p for p in out if pid_of(p) == 0x100)
    assert first_video[1] & 0x40 and first_video[5] & 0x40


@pytest.mark.parametrize("video_type", [0x1B, 0x02])
def test_keyframe_found_in_the_pes_payload_without_rai(video_type: int) -> None:
    """H.264 IDR/SPS or MPEG-2 sequence header/I-picture, when the upstream sets no RAI."""
    splicer = Splicer()
    out = run(splicer, Upstream(rai=False, video_type=video_type).stream(10, start=1))
    first_video = next(p for p in out if pid_of(p) == 0x100)
    assert pes_times(first_video)[1] == 900_000 + 5 * 3600


def test_without_keyframes_entry_happens_after_keyframe_wait_s() -> None:
    splicer = Splicer(keyframe_wait_s=1.0)
    up = Upstream(gop=1000)
    assert run(splicer, up.stream(4, start=1), now=10.0) == []
    assert run(splicer, up.stream(4, start=5), now=10.9) == [] and not splicer.entered
    out = run(splicer, up.stream(4, start=9), now=11.0)
    assert splicer.entered and splicer.last_entry_wait_s == pytest.approx(1.0)
    assert [pid_of(p) for p in out[:3]] == [0, 0x1000, 0x100]
    assert out[2][1] & 0x40, "entry still happens at a PES start"


def test_bridge_sends_nothing_before_the_first_output_then_valid_null_packets_and_psi() -> None:
    splicer = Splicer()
    assert splicer.bridge(0.0) == b""
    out = run(splicer, Upstream().stream(6))
    first = split(splicer.bridge(5.0))
    again = split(splicer.bridge(5.1))
    assert [pid_of(p) for p in first[:2]] == [0, 0x1000]
    nulls = [p for p in first + again if pid_of(p) == NULL_PID]
    assert len(nulls) == 14
    assert all(p[3] & 0x30 == 0x10 and p[4:] == b"\xff" * 184 and p[0] == 0x47 for p in nulls)
    assert not any(pid_of(p) in (0, 0x1000) for p in again), "PSI at a low rate"
    assert cc_errors(out + first + again) == []


def test_passthrough_only_aligns() -> None:
    packets = Upstream().stream(6)
    splicer = Splicer(enabled=False)
    out = run(splicer, packets)
    splicer.switch(1.0)
    out += run(splicer, B_upstream().stream(3), now=1.0)
    assert out == packets + B_upstream().stream(3)
    assert splicer.health(100.0) is None


def test_health_reports_novideo_when_video_is_silent_while_audio_flows() -> None:
    splicer = Splicer(no_video_s=3.0)
    up = Upstream()
    run(splicer, up.stream(6), now=0.0)
    assert splicer.health(0.5) is None
    for t in (1.0, 2.0, 3.0, 3.5):
        run(splicer, up.stream(2, start=int(t * 10), video=False), now=t)
    assert splicer.health(2.5) is None
    assert splicer.health(3.5) == "NoVideo"


def test_health_reports_novideo_when_the_new_pmt_has_no_video() -> None:
    splicer = Splicer()
    run(splicer, Upstream().stream(6))
    splicer.switch(1.0)
    run(splicer, B_upstream(video_type=0).stream(3), now=1.0)
    assert splicer.health(1.1) == "NoVideo"


def test_health_is_quiet_when_nothing_flows() -> None:
    """A full stall (no audio either) is the stall detector's business, not NoVideo."""
    splicer = Splicer()
    run(splicer, Upstream().stream(6), now=0.0)
    assert splicer.health(10.0) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut_a=st.integers(0, 110),
    start_b=st.integers(0, 12),
    cut_b=st.integers(20, 110),
    start_c=st.integers(0, 12),
    chunks=st.lists(st.integers(1, 2000), min_size=1, max_size=8),
    b_types=st.sampled_from([(0x1B, 0x0F), (0x02, 0x03)]),
)
@example(cut_a=8, start_b=0, cut_b=20, start_c=0, chunks=[1], b_types=(0x1B, 0x0F))  # the second frame cut
def test_splicer_output_is_whole_valid_packets_with_clean_cc_and_timeline(
    cut_a: int, start_b: int, cut_b: int, start_c: int, chunks: list[int], b_types: tuple[int, int]
) -> None:
    """Whatever the chunking and the switch points: whole 0x47 packets, no CC error, monotonic DTS per PID,
    and no truncated PES (video PES are 3 packets, audio PES 2, in these upstreams)."""
    splicer = Splicer(hold_max_s=1e9)
    out: list[bytes | memoryview] = []
    sources = [
        b"".join(Upstream().stream(16)[:cut_a]),
        b"".join(B_upstream(video_type=b_types[0], audio_type=b_types[1]).stream(16, start=start_b)[:cut_b]),
        b"".join(Upstream(t0=77).stream(16, start=start_c)),
    ]
    now = 0.0
    for k, data in enumerate(sources):
        if k:
            splicer.switch(now)
        aligner = PacketAligner(sync_packets=3)
        pos, i = 0, 0
        while pos < len(data):
            step = chunks[i % len(chunks)]
            now += 0.001
            out += splicer.feed(aligner.feed(data[pos : pos + step]), now)
            pos, i = pos + step, i + 1
        out.append(splicer.bridge(now))
    out += splicer.poll(now + 60)  # the end: what still trailed by the lag
    blob = join(out)
    assert len(blob) % TS == 0 and blob[::TS] == b"\x47" * (len(blob) // TS)
    packets = split(blob)
    assert cc_errors(packets) == []
    pats = sections_on(packets, 0)
    psi = {0, NULL_PID} | {pid for _, pid in parse_pat(pats[0])[2]} if pats else {0, NULL_PID}
    for pid in {pid_of(p) for p in packets} - psi:
        dts = video_dts(packets, pid)
        assert all(0 < (b - a) % PTS_MODULUS < 90000 * 3 for a, b in itertools.pairwise(dts)), (
            hex(pid),
            dts,
        )
    sizes: dict[int, list[int]] = {}
    entry_runs: list[int] = []  # video runs right after our PAT/PMT: an upstream's entry frame
    prev = -1
    for p in packets:
        if pid_of(p) in psi:
            prev = pid_of(p)
            continue
        runs = sizes.setdefault(pid_of(p), [])
        if p[1] & 0x40:
            runs.append(0)
            if pid_of(p) == 0x100 and prev not in (-1, 0x100, 0x101, NULL_PID):
                entry_runs.append(len(runs) - 1)
        assert runs, "an ES starts at a PES start"
        runs[-1] += 1
        prev = pid_of(p)
    for pid, runs in sizes.items():
        whole = 3 if pid in (0x100, 0x1E1) else 2
        # an entry frame and the frame after it stream as they arrive (issue 18; README, "Splice"): cut
        # only if their upstream died inside them
        streamed = {k for e in entry_runs for k in (e, e + 1)}
        cut = [r for k, r in enumerate(runs) if r != whole and not (pid == 0x100 and k in streamed)]
        assert cut == [] and max(runs) <= whole, (hex(pid), runs)
