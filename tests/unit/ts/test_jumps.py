"""Timestamp jumps inside one upstream (relay/ts/timeline.py epochs): rebased like a switch."""

from __future__ import annotations

import itertools

import pytest

from relay.ts import Splicer
from relay.ts.pes import PTS_MODULUS
from tests.tsbuild import Upstream, cc_errors, pcr_of, pes_times, pid_of, run

FRAME = 3600


def steps(values: list[int]) -> list[int]:
    return [(b - a) % PTS_MODULUS for a, b in itertools.pairwise(values)]


def jump_stream(new_t0: int) -> list[bytes]:
    """20 frames, then the encoder restarts at `new_t0` (same PIDs, its counters running on)."""
    up = Upstream()
    first = up.stream(20)
    up.t0 = new_t0 - 20 * up.frame  # frame 20 onwards carries timestamps from new_t0
    return first + up.stream(20, start=20)


@pytest.mark.parametrize(
    "new_t0", [100, 5_000_000_000, 900_000 - 5 * 90000], ids=["loop", "restart", "back5s"]
)
def test_a_jump_inside_one_upstream_steps_one_frame_and_flags_the_pcr(new_t0: int) -> None:
    s = Splicer(frame_hold=False)
    out = run(s, jump_stream(new_t0))
    video = [pes_times(p)[1] for p in out if pid_of(p) == 0x100 and p[1] & 0x40]
    assert all(v is not None for v in video) and len(video) == 40
    assert steps([v for v in video if v is not None]) == [FRAME] * 39  # no jump at the viewer
    audio = [pes_times(p)[0] for p in out if pid_of(p) == 0x101 and p[1] & 0x40]
    assert steps([a for a in audio if a is not None]) == [FRAME] * 39
    pcrs = [(pcr_of(p), bool(p[5] & 0x80)) for p in out if pcr_of(p) is not None]
    assert all(0 < st <= 2 * FRAME for st in steps([c for c, _ in pcrs]))
    assert [di for _, di in pcrs].count(True) == 1 and pcrs[20][1]  # the new epoch's first PCR
    assert cc_errors(out) == []
    assert s._timeline.jumps == 1


def test_a_stream_without_jumps_passes_byte_identical() -> None:
    packets = Upstream().stream(40)
    s = Splicer(frame_hold=False)
    assert run(s, packets) == packets


def test_audio_of_the_old_epoch_after_the_new_videos_first_frame_stays_on_the_old_epoch() -> None:
    """A muxer interleaves: the new epoch's first video PES comes before the old epoch's last audio."""
    up = Upstream()
    a = up.stream(20)
    up.t0 = 100 - 20 * up.frame
    b = up.stream(20, start=20)
    # move frame 19's audio (2 packets, old epoch) behind frame 20's video
    audio19 = a[-2:]
    v20 = [p for p in b[: len(b)] if pid_of(p) == 0x100][:3]
    rest = [p for p in b if p not in v20]
    s = Splicer(frame_hold=False)
    out = run(s, a[:-2] + v20 + audio19 + rest)
    audio = [pes_times(p)[0] for p in out if pid_of(p) == 0x101 and p[1] & 0x40]
    assert steps([x for x in audio if x is not None]) == [FRAME] * 39
