"""Content health (relay/ts/health.py) through the Splicer: NoMedia for zombie upstreams, time passed in."""

from __future__ import annotations

from relay.ts import Splicer
from relay.ts.packet import NULL_PACKET
from tests.tsbuild import Upstream, run


def feed_for(splicer: Splicer, packets: list[bytes], t0: float, t1: float, step: float = 0.1) -> None:
    """Feed `packets` again every `step` seconds from t0 to t1 (a provider that keeps sending them)."""
    t = t0
    while t <= t1 + 1e-9:
        run(splicer, packets, now=t)
        t += step


def test_only_null_packets_is_nomedia_after_no_media_s() -> None:
    s = Splicer(no_media_s=3.0)
    feed_for(s, [NULL_PACKET] * 7, 0.0, 2.9)
    assert s.health(2.9) is None
    feed_for(s, [NULL_PACKET] * 7, 3.0, 3.0)
    assert s.health(3.0) == "NoMedia"


def test_a_pat_whose_pmt_never_comes_is_nomedia() -> None:
    up = Upstream()
    pat = up.psi()[:1]
    s = Splicer(no_media_s=3.0)
    feed_for(s, pat + [NULL_PACKET] * 3, 0.0, 3.0)
    assert s.health(3.0) == "NoMedia"


def test_a_pmt_whose_pids_never_arrive_is_nomedia() -> None:
    s = Splicer(no_media_s=2.0, no_video_s=1.0)
    feed_for(s, Upstream().psi() + [NULL_PACKET] * 3, 0.0, 2.0)
    assert s.health(1.5) is None  # no audio flows either: not NoVideo
    assert s.health(2.0) == "NoMedia"


def test_mid_stream_only_psi_is_nomedia_no_media_s_after_the_last_pes() -> None:
    up = Upstream()
    s = Splicer(no_media_s=3.0)
    out = run(s, up.stream(20), now=0.0)
    assert out and s.health(0.0) is None
    feed_for(s, up.psi(), 0.1, 2.9)
    assert s.health(2.9) is None
    feed_for(s, up.psi(), 3.0, 3.0)
    assert s.health(3.0) == "NoMedia"


def test_a_silent_upstream_is_no_content_failure_the_stall_timer_owns_it() -> None:
    s = Splicer(no_media_s=3.0)
    run(s, [NULL_PACKET] * 7, now=0.0)
    assert s.health(10.0) is None  # nothing came for 10 s: StreamStall, not NoMedia


def test_media_flowing_is_healthy_for_ever_and_audio_only_counts_as_media() -> None:
    up = Upstream()
    s = Splicer(no_media_s=3.0)
    for i in range(100):
        run(s, up.stream(1, start=i), now=i * 0.1)
        assert s.health(i * 0.1) is None
    radio = Upstream(video_type=0)
    s = Splicer(no_media_s=3.0)
    for i in range(100):
        run(s, radio.stream(1, start=i), now=i * 0.1)
        assert s.health(i * 0.1) is None


def test_a_switch_starts_the_new_upstream_with_fresh_health() -> None:
    up = Upstream()
    s = Splicer(no_media_s=3.0)
    feed_for(s, [NULL_PACKET] * 7, 0.0, 3.0)
    assert s.health(3.0) == "NoMedia"
    s.switch(3.0)
    assert s.health(3.0) is None
    run(s, up.stream(5), now=3.1)
    assert s.health(3.2) is None


def test_passthrough_judges_nothing() -> None:
    s = Splicer(no_media_s=3.0, enabled=False)
    feed_for(s, [NULL_PACKET] * 7, 0.0, 4.0)
    assert s.health(4.0) is None
